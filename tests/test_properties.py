"""Property-based tests (hypothesis) of every argument a user hands our configs and builders.

For each config class (``PartialMoEBertConfig``, ``DynamicResNetConfig``, ``BoostedEarlyExitConfig``,
``DMSLlamaConfig``, ``PrunedBertConfig``, ``SlimmableBertConfig``, ``SlimmableLlamaConfig``, ``PEMNConfig``),
each builder (``PartialMoEBert*.from_dense``, ``DynamicResNet*.from_static``, ``BoostedEarlyExit*.from_backbone``,
``SlimmableBert*.from_dense``) and ``DMSPruner``, one argument at a time takes any value — a plausible one, an
edge number (0, negative, huge, ±inf, NaN) or a wrong type (``"no"``, ``2.0`` for an int or a bool, ``None``, a list,
a dict). Then exactly one of:

- the value is refused with a ``ValueError`` / ``TypeError`` whose message names the argument. transformers' own
  ``@strict`` checks (field types, ``validate_architecture``) raise huggingface_hub's ``StrictDataclassError``s (an
  ``Exception`` that wraps the ``TypeError`` / ``ValueError``): :func:`refusal` accepts one only with such a cause;
- the value is accepted and kept exactly (:func:`assert_kept`: same type and value; an ``int`` for a float field is
  the one widening allowed), it is not NaN, and it survives ``save_pretrained`` / ``from_pretrained`` (the pruner:
  its ``state_dict`` into a fresh pruner) with the same value. An unknown keyword is a ``TypeError`` for a builder;
  for a config (which, as every transformers config, stores extra keywords as attributes) it must round-trip.

Derandomized with fixed example counts (:data:`FAST`, :data:`MODELS`) so CI sees the same examples every run.
"""

from __future__ import annotations

import math
import tempfile

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM, ResNetConfig
from transformers import ResNetForImageClassification

import hf_dynamic  # noqa: F401  (registers the model types)
from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.models.boosted_early_exit import BoostedEarlyExitConfig, BoostedEarlyExitForSequenceClassification
from hf_dynamic.models.dms_llama import DMSLlamaConfig
from hf_dynamic.models.dynamic_resnet import DynamicResNetConfig, DynamicResNetForImageClassification
from hf_dynamic.models.partial_moe_bert import PartialMoEBertConfig, PartialMoEBertForSequenceClassification
from hf_dynamic.models.pruned_bert import PrunedBertConfig
from hf_dynamic.models.slimmable_bert import SlimmableBertConfig, SlimmableBertForSequenceClassification
from hf_dynamic.models.slimmable_llama import SlimmableLlamaConfig
from hf_dynamic.pemn.config import PEMNConfig

# Config-only properties run many examples; those that build a model per example fewer.
FAST = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
                database=None)
MODELS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
                  database=None)

# --------------------------------------------------------------------------------------------------- any value
EDGE_NUMBERS = st.one_of(
    st.sampled_from([0, 1, -1, 2, 0.0, 1.0, -0.5, 1e-12, float("inf"), float("-inf"), float("nan")]),
    st.integers(-5, 100), st.floats(-1e3, 1e3),
)
# Huge sizes only where nothing is allocated from them (a config alone): a builder would try to allocate them, and
# transformers' own num_labels setter loops over range(num_labels).
HUGE_NUMBERS = st.one_of(EDGE_NUMBERS, st.sampled_from([1e12, 2 ** 62]), st.floats(allow_nan=True, allow_infinity=True))
WRONG_TYPES = st.one_of(
    st.none(), st.booleans(), st.sampled_from(["no", "yes", "True", "1", "0.5", "", "x"]),
    st.lists(st.integers(-2, 6), max_size=3), st.lists(st.floats(-2, 6), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["0", "a"]), st.integers(0, 3), max_size=1), st.just((1, 2)),
)


def any_value(plausible, huge: bool = False):
    """A plausible value for the field (half the draws, so the accepted path is exercised), an edge number or a
    wrong type."""
    kinds = (plausible, plausible, HUGE_NUMBERS if huge else EDGE_NUMBERS, WRONG_TYPES)
    return st.integers(0, len(kinds) - 1).flatmap(lambda kind: kinds[kind])


def field_and_value(fields: dict, huge: bool = False):
    """(name, value): one field of ``fields`` (name -> plausible strategy) with any value."""
    return st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.tuples(st.just(name), any_value(fields[name], huge=huge)))


UNKNOWN = st.tuples(st.sampled_from(["num_kernal", "dynamic_ration", "num_expert", "exit_layer", "lr", "x"]),
                    st.one_of(st.integers(0, 5), st.booleans(), st.text(max_size=3)))


# ------------------------------------------------------------------------------------------------------ checks
def messages(error: BaseException):
    """The messages of ``error`` and its causes."""
    while error is not None:
        yield str(error)
        error = error.__cause__


def refusal(error: BaseException, name: str) -> None:
    """Assert ``error`` is a proper refusal of argument ``name``: a ``ValueError`` / ``TypeError`` (or transformers'
    strict type error wrapping a ``TypeError``) whose message names ``name``."""
    typed = isinstance(error, (ValueError, TypeError)) or (
        isinstance(error, StrictDataclassError) and isinstance(error.__cause__, (ValueError, TypeError)))
    assert typed, f"{name}: refused with {type(error).__name__}, not a ValueError/TypeError: {error}"
    assert any(name in message for message in messages(error)), (
        f"{name}: the {type(error).__name__} does not name the argument: {error}")


def has_nan(value) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple, set)):
        return any(has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    return False


def same(given, stored) -> bool:
    """``stored`` is ``given``: same type and value, recursively (a list / tuple may come back as the other; an
    ``int`` may come back as the equal ``float``, the one lossless widening)."""
    if isinstance(given, (list, tuple)):
        return isinstance(stored, (list, tuple)) and len(given) == len(stored) and all(map(same, given, stored))
    if isinstance(given, dict):
        return isinstance(stored, dict) and given.keys() == stored.keys() and all(same(given[k], stored[k])
                                                                                    for k in given)
    if type(given) is int and type(stored) is float:
        return given == stored
    return type(given) is type(stored) and given == stored


def assert_kept(name: str, given, stored) -> None:
    assert not has_nan(given), f"{name}={given!r} accepted: NaN must be refused"
    assert same(given, stored), f"{name}={given!r} ({type(given).__name__}) stored as {stored!r} " \
                                f"({type(stored).__name__}): a silent coercion"


def attempt(build, name):
    """``build()``, or None after checking the refusal names ``name``."""
    try:
        built = build()
    except Exception as error:  # noqa: BLE001  (refusal() checks the type)
        refusal(error, name)
        event("refused")
        return None
    event("accepted")  # --hypothesis-show-statistics shows how often each path ran
    return built


def config_round_trip(config, name: str) -> None:
    """``save_pretrained`` / ``from_pretrained`` keeps every field, ``name`` exactly as the config holds it."""
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        loaded = type(config).from_pretrained(folder)
    assert loaded.to_dict() == config.to_dict(), f"{name}={getattr(config, name)!r}: changed through save/load"
    assert_kept(name, getattr(config, name), getattr(loaded, name))


def model_round_trip(model, name: str) -> None:
    """``save_pretrained`` / the class's ``from_pretrained``: the same config (``name`` exactly) and weights."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        loaded = type(model).from_pretrained(folder)
    given = getattr(model.config, name)
    # auto_map: a model's save_pretrained writes its remote code and auto_map into the folder (hf_dynamic.sharing)
    # and leaves the in-memory config as it was.
    expected_config, loaded_config = ({k: v for k, v in c.to_diff_dict().items() if k != "auto_map"}
                                      for c in (model.config, loaded.config))
    assert loaded_config == expected_config, f"{name}={given!r}: config changed"
    assert_kept(name, given, getattr(loaded.config, name))
    expected = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), f"{name}={given!r}: {key} changed through save/load"


# ------------------------------------------------------------------------------------------------ tiny models
def tiny_bert_kwargs() -> dict:
    return dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                max_position_embeddings=32)


def tiny_resnet_kwargs() -> dict:
    return dict(num_channels=1, embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], layer_type="basic",
                num_labels=3)


def tiny_llama_kwargs() -> dict:
    return dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=64)


# --------------------------------------------------------------------------------------- fields, per config
FLOAT_01 = st.floats(0, 1, exclude_min=True)
PAD_MOE_FIELDS = {
    "num_experts": st.integers(1, 6),
    "num_experts_per_tok": st.integers(1, 3),
    "moe_layers": st.none() | st.lists(st.integers(0, 1), min_size=1, max_size=2, unique=True),
    "dynamic_ratio": FLOAT_01 | st.just(1),
    "partition_granularity": st.sampled_from(["element", "neuron"]),
    "router_aux_loss_coef": st.floats(0, 1),
    "router_jitter_noise": st.floats(0, 0.5),
    "router_noise_std": st.floats(0, 1),
    "output_router_logits": st.booleans(),
    "pad_state": st.just("unpartitioned"),
}
DYNAMIC_RESNET_FIELDS = {
    "num_kernels": st.integers(1, 5),
    "routing": st.sampled_from(["softmax", "sigmoid"]),
    "attention_reduction": st.integers(1, 32),
    "temperature": st.floats(0.1, 40),
    "dynamic_ratio": FLOAT_01 | st.just(1),
    "partition_granularity": st.sampled_from(["element", "filter"]),
    "dynamic_convs": st.none() | st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
    "pad_state": st.just("unpartitioned"),
}
BOOSTED_FIELDS = {
    "exit_layers": st.sampled_from([[2], [1, 2]]),
    "boosting": st.booleans(),
    "ensemble_temperature": st.floats(0.01, 2),
    "gradient_rescale": st.booleans(),
    "exit_criterion": st.sampled_from(["confidence", "entropy", "patience"]),
    "exit_thresholds": st.none() | st.lists(st.floats(0, 1), min_size=2, max_size=2),
    "exit_patience": st.none() | st.integers(1, 3),
    "patience_tolerance": st.floats(0, 1),
    "exit_loss_weights": st.none() | st.lists(st.floats(0, 2), min_size=2, max_size=2),
    "classifier_dropout": st.none() | st.floats(0, 1),
    "exit_pooling": st.sampled_from(["cls", "mean"]),
}
DMS_LLAMA_FIELDS = {
    "layer_num_attention_heads": st.sampled_from([[4, 2], [4, 4], [0, 2]]),
    "layer_num_key_value_heads": st.sampled_from([[2, 2], [2, 1]]),
    "layer_intermediate_sizes": st.sampled_from([[48, 16], [0, 48]]),
    "output_proj_bias": st.booleans(),
}
PRUNED_BERT_FIELDS = {
    "head_dim": st.sampled_from([8, 4, 16]),
    "layer_num_attention_heads": st.sampled_from([[1, 2], [2, 2], [0, 2], [2]]),
    "layer_intermediate_sizes": st.sampled_from([[8, 24], [1, 1], [24, 0], [24]]),
}
SLIM_FIELDS = {
    "slim_width": st.one_of(st.floats(0.25, 1), st.sampled_from(
        [{0: 0.5}, {"1": {"mlp": 0.25}}, {1: {"attention": 0.5, "mlp": 1}}, {"0": 0.5, 1: 0.75}])),
}
PEMN_FIELDS = {
    "target_modules": st.sampled_from([["query"], "query|value", ["query", "key"]]),
    "exclude_modules": st.none() | st.sampled_from([["key"], "key"]),
    "strategy": st.sampled_from(["one_layer", "mp", "rp"]),
    "sparsity": st.floats(0, 1, exclude_min=True, exclude_max=True),
    "ratio": FLOAT_01,
    "permute": st.booleans(),
    "init": st.sampled_from(["signed_constant", "kaiming_normal"]),
    "scale_fan": st.booleans(),
    "seed": st.integers(0, 2 ** 31),
    "random_bias": st.booleans(),
    "init_scores": st.sampled_from(["kaiming_uniform", "magnitude"]),
}
PRUNER_FIELDS = {
    "target": st.floats(0, 1, exclude_min=True, exclude_max=True),
    "prune": st.sampled_from(["mlp", ("heads", "mlp"), ["hidden"], ("layers",)]),
    "resource": st.sampled_from(["params", "flops"]),
    "uniform": st.booleans(),
    "head_grouping": st.sampled_from(["kv", "query"]),
    "resource_weight": st.floats(1e-3, 10),
    "temperatures": st.none() | st.fixed_dictionaries({"mlp": st.floats(0.1, 8)}),
    "flops_seq_len": st.integers(1, 4096),
    "resource_weight_adapt": st.floats(0, 1),
    "channel_multiple": st.integers(1, 8),
}

CONFIGS = {
    "partial_moe_bert": (PartialMoEBertConfig, lambda: dict(**tiny_bert_kwargs(), num_experts=4), PAD_MOE_FIELDS),
    "dynamic_resnet": (DynamicResNetConfig, lambda: dict(**tiny_resnet_kwargs(), dynamic_ratio=0.5),
                       DYNAMIC_RESNET_FIELDS),
    "boosted_early_exit": (BoostedEarlyExitConfig,
                           lambda: dict(backbone=BertConfig(**tiny_bert_kwargs()), num_labels=2), BOOSTED_FIELDS),
    "dms_llama": (DMSLlamaConfig, tiny_llama_kwargs, DMS_LLAMA_FIELDS),
    "pruned_bert": (PrunedBertConfig, tiny_bert_kwargs, PRUNED_BERT_FIELDS),
    "slimmable_bert": (SlimmableBertConfig, tiny_bert_kwargs, SLIM_FIELDS),
    "slimmable_llama": (SlimmableLlamaConfig, tiny_llama_kwargs, SLIM_FIELDS),
}
# Fields where None asks for the documented default, which the config then stores concretely.
NONE_IS_DEFAULT = {"layer_num_attention_heads", "layer_num_key_value_heads", "layer_intermediate_sizes",
                   "exit_layers", "head_dim"}
# A config field the property may not see kept exactly, with why.
def _int_layer_keys(given, stored) -> bool:
    """slim_width: config.json's string layer keys ("1") are read as the ints set_width takes."""
    return isinstance(given, dict) and stored == {int(k) if isinstance(k, str) else k: v for k, v in given.items()}


NORMALISED = {
    **{(key, "slim_width"): _int_layer_keys for key in ("slimmable_bert", "slimmable_llama", "slimmable_from_dense")},
    # PEMN hands peft a set of module names, as peft's own configs do (LoraConfig turns a list into a set).
    ("pemn", "target_modules"): lambda given, stored: isinstance(given, str) and given == stored
    or isinstance(stored, set) and stored == set(given),
}


def kept_or_normalised(key, name, given, stored):
    if given is None and name in NONE_IS_DEFAULT:
        return
    rule = NORMALISED.get((key, name))
    if rule is not None and not has_nan(given) and rule(given, stored):
        return
    assert_kept(name, given, stored)


# --------------------------------------------------------------------------------------------- config tests
def test_every_registered_type_has_a_config_property():
    from hf_dynamic.registry import MODEL_PACKAGES
    import importlib

    registered = {importlib.import_module(p).CONFIG_CLASS.model_type for p in MODEL_PACKAGES}
    assert registered == set(CONFIGS), f"config properties missing for {registered - set(CONFIGS)}"


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@FAST
@given(data=st.data())
def test_config_field_is_kept_and_round_trips_or_refused_by_name(model_type, data):
    config_class, base, fields = CONFIGS[model_type]
    name, value = data.draw(field_and_value(fields, huge=True), label="field, value")
    config = attempt(lambda: config_class(**{**base(), name: value}), name)
    if config is not None:
        kept_or_normalised(model_type, name, value, getattr(config, name))
        config_round_trip(config, name)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@settings(FAST, max_examples=10)
@given(unknown=UNKNOWN)
def test_config_unknown_keyword_is_kept_not_dropped(model_type, unknown):
    """transformers configs store an extra keyword as an attribute: it must be there and survive save/load."""
    config_class, base, _ = CONFIGS[model_type]
    name, value = unknown
    config = attempt(lambda: config_class(**{**base(), name: value}), name)
    if config is not None:
        assert_kept(name, value, getattr(config, name))
        config_round_trip(config, name)


@FAST
@given(data=st.data())
def test_pemn_config_field_is_kept_and_round_trips_or_refused_by_name(data):
    name, value = data.draw(field_and_value(PEMN_FIELDS, huge=True), label="field, value")
    kwargs = {"target_modules": ["query"], name: value}
    config = attempt(lambda: PEMNConfig(**kwargs), name)
    if config is not None:
        kept_or_normalised("pemn", name, value, getattr(config, name))
        with tempfile.TemporaryDirectory() as folder:
            config.save_pretrained(folder)
            loaded = PEMNConfig.from_pretrained(folder)
        assert loaded.to_dict() == config.to_dict(), f"{name}={value!r}: changed through save/load"


@settings(FAST, max_examples=10)
@given(unknown=UNKNOWN)
def test_pemn_config_unknown_keyword_is_a_type_error(unknown):
    name, value = unknown
    with pytest.raises(TypeError, match=name):
        PEMNConfig(target_modules=["query"], **{name: value})


# -------------------------------------------------------------------------------------------- builder tests
def dense_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**tiny_bert_kwargs(), num_labels=2)).eval()


def static_resnet():
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(**tiny_resnet_kwargs())).eval()


# num_labels is left out: it is transformers' own field, whose setter turns -1 into 0 labels and None into a
# TypeError from range() (PreTrainedConfig.num_labels), as for every transformers classifier.
BUILDERS = {
    "from_dense": (lambda **kw: PartialMoEBertForSequenceClassification.from_dense(dense_bert(), **kw),
                   PAD_MOE_FIELDS),
    "from_static": (lambda **kw: DynamicResNetForImageClassification.from_static(static_resnet(), **kw),
                    DYNAMIC_RESNET_FIELDS),
    "from_backbone": (lambda **kw: BoostedEarlyExitForSequenceClassification.from_backbone(dense_bert(), **kw),
                      BOOSTED_FIELDS),
    "slimmable_from_dense": (lambda **kw: SlimmableBertForSequenceClassification.from_dense(dense_bert(), **kw),
                             SLIM_FIELDS),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@MODELS
@given(data=st.data())
def test_builder_argument_is_kept_and_round_trips_or_refused_by_name(builder, data):
    build, fields = BUILDERS[builder]
    name, value = data.draw(field_and_value(fields), label="argument, value")
    model = attempt(lambda: build(**{name: value}), name)
    if model is not None:
        kept_or_normalised(builder, name, value, getattr(model.config, name))
        model_round_trip(model, name)


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@settings(FAST, max_examples=5)
@given(unknown=UNKNOWN)
def test_builder_unknown_keyword_is_a_type_error(builder, unknown):
    name, value = unknown
    with pytest.raises(TypeError, match=name):
        BUILDERS[builder][0](**{name: value})


# --------------------------------------------------------------------------------------------- pruner tests
def pruner_setting(pruner: DMSPruner, name: str):
    """The value the pruner keeps for its argument ``name``."""
    if name == "temperatures":
        return {kind: module.temperature for kind, module in pruner.topk.items()}
    return getattr(pruner, {"resource": "resource_kind"}.get(name, name))


def pruner_expected(name: str, value, pruner: DMSPruner):
    """What the pruner must keep for an accepted ``value``: ``prune`` as the tuple of the kinds it names (in the
    canonical order), ``temperatures`` merged over the defaults for the searched kinds; else the value itself."""
    from hf_dynamic.dms.pruner import DEFAULT_TEMPERATURES, ELEMENT_KINDS

    if name == "prune":
        kinds = (value,) if isinstance(value, str) else tuple(value)
        return tuple(k for k in ELEMENT_KINDS if k in kinds)
    if name == "temperatures":
        return {k: v for k, v in {**DEFAULT_TEMPERATURES, **(value or {})}.items() if k in pruner.topk}
    return value


@MODELS
@given(data=st.data())
def test_pruner_argument_is_kept_and_gives_finite_losses_or_refused_by_name(data):
    name, value = data.draw(field_and_value(PRUNER_FIELDS), label="argument, value")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**tiny_llama_kwargs())).eval()
    kwargs = {"target": 0.5, "prune": ("heads", "mlp", "hidden", "layers"), name: value}
    pruner = attempt(lambda: DMSPruner(model, **kwargs), name)
    if pruner is None:
        assert not list(model._forward_pre_hooks.values()) and not any(
            m._forward_hooks for m in model.modules()), f"{name}={value!r} refused but hooks were left attached"
        return
    try:
        expected = pruner_expected(name, value, pruner)
        assert_kept(name, expected, pruner_setting(pruner, name))
        ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
        loss = model(input_ids=ids, labels=ids).loss
        total = pruner.add_resource_loss(loss)
        assert torch.isfinite(loss) and torch.isfinite(total), f"{name}={value!r}: loss {loss}, with resource {total}"
        total.backward()
        for parameter in pruner.parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), f"{name}={value!r}: NaN gradient"
        # The search state round-trips: a fresh pruner with the same arguments loads it exactly.
        state = pruner.state_dict()
    finally:
        pruner.remove()
    torch.manual_seed(0)
    again_model = LlamaForCausalLM(LlamaConfig(**tiny_llama_kwargs())).eval()
    again = DMSPruner(again_model, **kwargs)
    try:
        again.load_state_dict(state)
        assert torch.equal(again.resource_ratio(), pruner.resource_ratio()), f"{name}={value!r}: state changed"
        assert_kept(name, expected, pruner_setting(again, name))
    finally:
        again.remove()


@settings(FAST, max_examples=5)
@given(unknown=UNKNOWN)
def test_pruner_unknown_keyword_is_a_type_error(unknown):
    name, value = unknown
    model = LlamaForCausalLM(LlamaConfig(**tiny_llama_kwargs()))
    with pytest.raises(TypeError, match=name):
        DMSPruner(model, target=0.5, **{name: value})
