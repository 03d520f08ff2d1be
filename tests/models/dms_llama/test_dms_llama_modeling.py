"""``dms_llama``: the per-layer export of a DMS search (``DMSLlamaForCausalLM.from_pruned``), its config
validation, and loading a checkpoint saved by an earlier version of the code."""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.models.dms_llama import DMSLlamaConfig, DMSLlamaForCausalLM

from dms_testing import VOCAB, hard_logits, set_structure, tiny_llama

TOL = 1e-4


def tiny(**overrides):
    return tiny_llama(random_norms=True, **overrides)


@pytest.mark.parametrize("grouping", ["kv", "query"])
def test_per_layer_export_with_missing_sub_blocks(grouping, tmp_path):
    model = tiny(num_hidden_layers=3, tie_word_embeddings=(grouping == "kv"), use_cache=False)
    pruner = DMSPruner(model, 0.5, head_grouping=grouping, uniform=False)
    # sub-block order: [attn0, mlp0, attn1, mlp1, attn2, mlp2]; drop attention of layer 0 and MLP of layer 2
    layer_importance = [0.0, 5.0, 4.0, 3.0, 2.0, 0.5]
    heads = [1, 2, 1]
    set_structure(pruner, {"heads": heads, "mlp": [5, 48, 17], "hidden": 21, "layers": 4}, layer_importance)
    s = pruner.hard_structure()
    assert s.attention_present == [False, True, True] and s.mlp_present == [True, True, False]
    with pytest.raises(ValueError, match="not uniform.*only one of attention/MLP.*spread"):
        pruner.export(uniform=True)

    exported = DMSLlamaForCausalLM.from_pruned(pruner)
    assert type(exported) is DMSLlamaForCausalLM and exported.config.model_type == "dms_llama"
    c = exported.config
    assert c.use_cache is True
    assert c.layer_intermediate_sizes == [5, 48, 0]
    assert c.layer_num_attention_heads[0] == 0 and c.hidden_size == 21
    assert exported.model.layers[0].self_attn is None and exported.model.layers[2].mlp is None
    x = torch.randint(0, VOCAB, (2, 10))
    reference = hard_logits(pruner, model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # e.g. transformers' renamed cache argument
        assert (exported(x).logits - reference).abs().max() <= TOL
    assert exported.num_parameters() == int(pruner.resource(hard=True))

    exported.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert type(loaded) is DMSLlamaForCausalLM
    for (k, v), (k2, v2) in zip(exported.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert torch.equal(loaded(x).logits, exported(x).logits)

    # generation with a KV cache (layer 0 has no attention: cache slots are renumbered) equals the masked model's
    prompt = x[:1, :4]
    with torch.no_grad(), pruner.hard_masks():
        ref_tokens = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        tokens = loaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, ref_tokens)


def test_dms_llama_config_validation():
    # transformers' strict configs wrap validator errors (the same class LlamaConfig raises)
    from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError

    with pytest.raises(ConfigError, match="layer 1"):
        DMSLlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                       layer_num_attention_heads=[4, 3], layer_num_key_value_heads=[2, 2])
    with pytest.raises(ConfigError, match="layer_intermediate_sizes"):
        DMSLlamaConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, layer_intermediate_sizes=[4])


def test_checkpoint_of_the_first_version_loads_and_reproduces_its_logits():
    """tests/fixtures/dms_llama_v0: saved by the code before the adapters (tests/fixtures/make_dms_llama_v0.py)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "fixtures" / "dms_llama_v0"
    expected = torch.load(path / "expected.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert type(model) is DMSLlamaForCausalLM
        assert model.config.layer_num_attention_heads == [0, 4, 2]
        with torch.no_grad():
            logits = model(expected["input_ids"]).logits
    assert torch.allclose(logits, expected["logits"], atol=1e-6, rtol=0)


def test_decoder_layer_forward_declares_transformers_kwargs():
    """``**kwargs: Unpack[TransformersKwargs]``, as ``LlamaDecoderLayer`` declares them."""
    import inspect
    from typing import Unpack

    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.utils import TransformersKwargs

    from hf_dynamic.models.dms_llama.modeling_dms_llama import DMSLlamaDecoderLayer

    annotation = inspect.signature(DMSLlamaDecoderLayer.forward).parameters["kwargs"].annotation
    assert annotation == Unpack[TransformersKwargs]
    assert annotation == inspect.signature(LlamaDecoderLayer.forward).parameters["kwargs"].annotation


def _tiny_config(**overrides):
    from dms_testing import TINY_LLAMA

    return DMSLlamaConfig(**{**TINY_LLAMA, "layer_num_attention_heads": [0, 4, 2],
                             "layer_num_key_value_heads": [0, 2, 1], "layer_intermediate_sizes": [48, 0, 20],
                             **overrides})


@pytest.mark.parametrize("cls_name", ["DMSLlamaModel", "DMSLlamaForCausalLM"])
def test_legacy_gradient_checkpointing_flag_is_applied(cls_name, tmp_path):
    """A config saved with the legacy ``gradient_checkpointing=True`` (transformers'
    ``test_gradient_checkpointing_backward_compatibility``). Before: the Llama constructor's post_init consumed
    the flag on its own layers, which ours then replaced, so nothing was checkpointed."""
    import json

    import hf_dynamic.models.dms_llama as dms_llama

    cls = getattr(dms_llama, cls_name)
    config = _tiny_config()
    config.gradient_checkpointing = True
    model = cls(config)
    layers = model.layers if cls_name == "DMSLlamaModel" else model.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    # from a saved config.json too
    _tiny_config().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "gradient_checkpointing": True}))
    loaded = cls(DMSLlamaConfig.from_pretrained(tmp_path))
    layers = loaded.layers if cls_name == "DMSLlamaModel" else loaded.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    assert not hasattr(loaded.config, "gradient_checkpointing")  # consumed, as transformers does


def test_constructors_set_what_the_llama_constructors_set():
    """DMSLlamaModel / DMSLlamaForCausalLM build their modules themselves (so that post_init runs once, after
    them); this fails when transformers' LlamaModel / LlamaForCausalLM gain an attribute ours lack."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dms_testing import TINY_LLAMA

    llama = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA))
    ours = DMSLlamaForCausalLM(_tiny_config())
    for theirs, mine in ((llama, ours), (llama.model, ours.model)):
        assert set(vars(mine)) - {"_output_capturing_hooks_installed"} == set(vars(theirs)) - {
            "_output_capturing_hooks_installed"}
        assert [name for name, _ in mine.named_children()] == [name for name, _ in theirs.named_children()]


def test_recorded_outputs_count_the_layers_that_exist():
    """Hidden states and attentions are recorded through Llama's ``_can_record_outputs`` (matched by isinstance
    on our subclasses): one hidden state per layer plus the embeddings, one attention map per layer with
    attention."""
    model = DMSLlamaForCausalLM(_tiny_config()).eval()
    model.set_attn_implementation("eager")
    x = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        out = model(x, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 4
    assert [tuple(a.shape) for a in out.attentions] == [(1, 4, 7, 7), (1, 2, 7, 7)]


@pytest.mark.parametrize("value", [[4.7, 4, 4], ["4", 4, 4], [True, 4, 4]])
def test_per_layer_widths_are_not_coerced(value):
    from huggingface_hub.errors import StrictDataclassFieldValidationError

    with pytest.raises(StrictDataclassFieldValidationError, match="layer_num_attention_heads"):
        _tiny_config(layer_num_attention_heads=value, layer_num_key_value_heads=None, layer_intermediate_sizes=None)
