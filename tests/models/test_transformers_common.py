"""transformers' own common model tests (``ModelTesterMixin``) run on every model type hf_dynamic registers.

``ModelTesterMixin`` is ``tests/test_modeling_common.py`` of the installed transformers, taken from its sdist by
:mod:`transformers_upstream` (``make setup`` fetches it; see that module). Two modules it imports are not in the
sdist, so the mixin's export tests (``ExportTesterMixin``: torch.export / ONNX / ExecuTorch) and generation tests
(``GenerationTesterMixin``) do not run here; the DynamicResNet ONNX export and ``dms_llama`` generation have their
own tests.

One test class per registered type, its tiny config and inputs taken from ``tests/models/test_common.py`` ``CASES``
(the first case of the type, with :data:`TESTER_OVERRIDES`). Every skip we ask for is in :data:`SKIPS` with its
reason; a known failure whose fix is pending goes in :data:`XFAILS`
(``xfail(strict=True)``). The rest of the skips are the mixin's own (GPU, flash-attention, multimodal, ...).
"""

from __future__ import annotations

import contextlib
import copy
import unittest
import unittest.mock

import pytest
import torch
import transformers
from transformers import ModernBertConfig

from test_common import BATCH, CASES, LENGTH, PACKAGES, VOCAB, Case, encoder_inputs, make_config, without_labels
from transformers_upstream import load_model_tester_mixin

ModelTesterMixin = load_model_tester_mixin().ModelTesterMixin


# ------------------------------------------------------------------------------------------------------- tester
# model type -> config keywords that differ from the test_common case, with why.
TESTER_OVERRIDES: dict[str, dict] = {
    # The mixin wants at most 2 layers (test_num_layers_is_small): layer 0 keeps all heads with a narrowed MLP,
    # layer 1 narrows the heads and drops its MLP.
    "dms_llama": dict(num_hidden_layers=2, layer_num_attention_heads=[4, 2], layer_num_key_value_heads=[2, 1],
                      layer_intermediate_sizes=[16, 0]),
    # test_can_load_ignoring_mismatched_shapes asserts the mean of a freshly initialised classifier is <= 0.1;
    # ResNet's init draws the bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so the last stage needs transformers'
    # own ResNet tester width (40) for that bound to hold rather than 8.
    "dynamic_resnet": dict(hidden_sizes=[4, 40]),
    # The mixin checks the first layer's attention maps against config.num_attention_heads: layer 0 at full width,
    # layer 1 with 1 of 2 heads and 8 of 24 FFN channels.
    "pruned_bert": dict(layer_num_attention_heads=[2, 1], layer_intermediate_sizes=[24, 8]),
    # The mixin checks the first layer's attention maps against config.num_attention_heads: layer 0 at full width,
    # layer 1 at half (as the slimmable_bert case).
    "slimmable_llama": dict(slim_width={1: 0.5}),
}


class TinyTester:
    """The ``model_tester`` the mixin expects: the first tiny case of ``model_type`` in ``test_common.CASES``
    with :data:`TESTER_OVERRIDES`."""

    def __init__(self, parent, model_type: str, case=None):
        self.parent = parent
        self.model_type = model_type
        self.case = CASES[model_type][0] if case is None else case
        self.batch_size, self.seq_length = BATCH, LENGTH
        self.is_training = True
        text = self.get_config().get_text_config()
        for name in ("num_hidden_layers", "num_attention_heads", "hidden_size"):
            if hasattr(text, name):
                setattr(self, name, getattr(text, name))

    def get_config(self):
        return make_config(self.model_type, self.case, **TESTER_OVERRIDES.get(self.model_type, {}))

    def prepare_config_and_inputs_for_common(self):
        return self.get_config(), without_labels(self.case.inputs(), self.case)


def name_mappings(model_type: str) -> list:
    """The entries transformers' own ``MODEL_*_MAPPING_NAMES`` would hold for ``model_type`` if it were theirs.

    The mixin recognises a head by these name mappings (``_prepare_for_class`` adds labels by them; the training
    tests skip the base models by them); ``AutoModel*.register`` fills the class mappings, not the name ones.
    The name dict of an Auto class is private (``_model_mapping._model_mapping``, no public accessor): a
    transformers release that moves it fails every test here with an AttributeError, not silently."""
    return [(getattr(transformers, auto_name)._model_mapping._model_mapping, model_class.__name__)
            for auto_name, model_class in PACKAGES[model_type].AUTO_CLASSES.items()]


# -------------------------------------------------------------------------------------------------------- skips
# model type -> test name -> reason (one line each).
SKIPS: dict[str, dict[str, str]] = {
    "partial_moe_bert": {
        "test_torch_save_load": "on a bool tensor (our PAD masks) transformers' test calls the state dict "
                                "(`state_dict()[key]`): a TypeError in the test itself (check_equal)",
    },
    "boosted_early_exit": {
        "test_correct_missing_keys": "by design a bare backbone checkpoint is refused with a ValueError naming "
                                     "from_backbone, which picks the exits (test_base_model_checkpoint_points_to_"
                                     "from_backbone)",
        "test_load_with_mismatched_shapes": "it ends by loading the checkpoint with AutoModel, which "
                                            "boosted_early_exit does not register (its base is the backbone's own "
                                            "type); the head part is test_from_pretrained_reheads_with_ignore_"
                                            "mismatched_sizes",
        "test_problem_types": "boosted exits are a softmax ensemble: multi_label_classification is refused with a "
                              "ValueError (test_multi_label_is_refused_at_the_forward_too)",
    },
    "dynamic_resnet": {
        "test_model_get_set_embeddings": "a ResNet has no token embeddings (transformers' ResNet tests skip it too)",
    },
    "dms_llama": {
        "test_generation_tester_mixin_inheritance": "GenerationTesterMixin (tests/generation/) is not in the "
                                                    "transformers sdist; tests/models/dms_llama tests generation",
    },
    "pruned_bert": {},
    "slimmable_bert": {},
    "slimmable_llama": {
        "test_generation_tester_mixin_inheritance": "GenerationTesterMixin (tests/generation/) is not in the "
                                                    "transformers sdist; tests/models/slimmable_llama tests "
                                                    "generation",
    },
}
# model type -> test name -> reason: a known failure whose fix is pending (empty today). Marked
# xfail(strict=True), so the run fails once the fix lands: then delete the entry.
XFAILS: dict[str, dict[str, str]] = {}


def _marked_copy(cls, name: str, mark, plain_subtests: bool = False):
    """``cls.name`` as a method of ``cls`` alone carrying ``mark`` (the inherited function is shared by every
    type's class, so it is not marked itself). ``plain_subtests``: run the test's ``subTest`` blocks as plain
    blocks, so that a failure inside one fails the test itself (pytest reports a failing subtest on its own, which
    an ``xfail`` mark does not cover)."""
    inherited = getattr(cls, name)

    def run(self):
        if not plain_subtests:
            return inherited(self)
        with unittest.mock.patch.object(self, "subTest", lambda *args, **kwargs: contextlib.nullcontext()):
            return inherited(self)

    run.__name__ = run.__qualname__ = name
    setattr(cls, name, mark(run))


class CommonTests(ModelTesterMixin):
    """The mixin plus our tester, the name mappings of our heads, :data:`SKIPS` and :data:`XFAILS`."""

    model_type: str = None
    case = None  # a test_common.Case of model_type; None: the type's first case

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, reason in SKIPS[cls.model_type].items():
            _marked_copy(cls, name, pytest.mark.skip(reason=reason))
        for name, reason in XFAILS.get(cls.model_type, {}).items():
            _marked_copy(cls, name, pytest.mark.xfail(strict=True, reason=reason), plain_subtests=True)

    def setUp(self):
        self.model_tester = TinyTester(self, self.model_type, self.case)
        for names, class_name in name_mappings(self.model_type):
            patcher = unittest.mock.patch.dict(names, {self.model_type: class_name})
            patcher.start()
            self.addCleanup(patcher.stop)


def classes(model_type: str) -> tuple:
    return tuple(PACKAGES[model_type].AUTO_CLASSES.values())


class TestPartialMoEBertCommon(CommonTests, unittest.TestCase):
    model_type = "partial_moe_bert"
    all_model_classes = classes("partial_moe_bert")

    def test_reverse_loading_mapping(self):
        # The one conversion (φ: a legacy 0-d tensor becomes [1]) changes a shape, not a key name.
        super().test_reverse_loading_mapping(check_keys_were_modified=False)


class TestBoostedEarlyExitCommon(CommonTests, unittest.TestCase):
    model_type = "boosted_early_exit"
    all_model_classes = classes("boosted_early_exit")


def _modernbert_inputs() -> dict:
    batch = encoder_inputs()
    batch.pop("token_type_ids")  # ModernBERT has no token types
    return batch


class TestBoostedEarlyExitModernBertCommon(CommonTests, unittest.TestCase):
    """The boosted model on a ModernBERT backbone, whose layers are not called the way BERT's are (rotary
    embeddings, local/global attention masks, a final norm): the backbone adapter table of hf_dynamic/boost."""

    model_type = "boosted_early_exit"
    all_model_classes = classes("boosted_early_exit")
    case = Case(
        "modernbert",
        lambda: dict(backbone=ModernBertConfig(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
            global_attn_every_n_layers=2, local_attention=4, max_position_embeddings=64, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2), num_labels=2, classifier_dropout=0.0),
        "AutoModelForSequenceClassification", _modernbert_inputs, ("ensemble_temperature", 0.0))


class TestDynamicResNetCommon(CommonTests, unittest.TestCase):
    model_type = "dynamic_resnet"
    all_model_classes = classes("dynamic_resnet")
    has_attentions = False
    test_resize_embeddings = False

    def test_hidden_states_output(self):
        # The mixin's version counts a transformer's layers; a ResNet returns the embedder's output and one map
        # per stage (what transformers' own ResNet tests check), the last one the model's last_hidden_state.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            for via_config in (False, True):
                config = copy.deepcopy(config)
                config.output_hidden_states = via_config
                model = model_class(config).eval()
                with torch.no_grad():
                    output = model(**inputs, **({} if via_config else {"output_hidden_states": True}))
                hidden = output.hidden_states
                self.assertEqual(len(hidden), len(config.depths) + 1)
                self.assertEqual([h.shape[1] for h in hidden], [config.embedding_size, *config.hidden_sizes])
                self.assertTrue(all(h.shape[0] == inputs["pixel_values"].shape[0] for h in hidden))
                if "last_hidden_state" in output:
                    torch.testing.assert_close(hidden[-1], output.last_hidden_state, rtol=0, atol=0)


class TestDMSLlamaCommon(CommonTests, unittest.TestCase):
    model_type = "dms_llama"
    all_model_classes = classes("dms_llama")

    @pytest.mark.filterwarnings("always::FutureWarning")
    def test_bc_cache_name_forward(self):
        # The test passes the deprecated `past_key_values` and asserts its FutureWarning, which pytest.ini makes
        # an error.
        super().test_bc_cache_name_forward()


class TestPrunedBertCommon(CommonTests, unittest.TestCase):
    model_type = "pruned_bert"
    all_model_classes = classes("pruned_bert")


class TestSlimmableBertCommon(CommonTests, unittest.TestCase):
    model_type = "slimmable_bert"
    all_model_classes = classes("slimmable_bert")


class TestSlimmableLlamaCommon(CommonTests, unittest.TestCase):
    model_type = "slimmable_llama"
    all_model_classes = classes("slimmable_llama")

    @pytest.mark.filterwarnings("always::FutureWarning")
    def test_bc_cache_name_forward(self):
        # As for dms_llama: the test asserts the FutureWarning of the deprecated `past_key_values`.
        super().test_bc_cache_name_forward()


def test_every_registered_type_runs_the_common_tests():
    tested = {cls.model_type for cls in CommonTests.__subclasses__()}
    assert tested == set(PACKAGES), f"registered types without a common-test class: {set(PACKAGES) - tested}"
    assert set(SKIPS) == set(PACKAGES) and set(XFAILS) <= set(PACKAGES) and set(TESTER_OVERRIDES) <= set(PACKAGES)
