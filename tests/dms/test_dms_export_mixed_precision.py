"""DMS exports of bf16 / fp16 / fp32 models (docs/dms.md, "## Mixed precision"): computed in fp32 and cast once,
so every exported weight is the correctly rounded value of the exact one, and the exported logits equal the
hard-masked model's within the dtype's own resolution."""

import pytest
import torch

from hf_dynamic.dms.pruner import DMSPruner
from hf_dynamic.models.dms_llama import DMSLlamaForCausalLM

from dms_testing import VOCAB, hard_logits, set_structure, tiny_llama

SHAPE = dict(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
             initializer_range=0.1)  # logits of about 2, as in the report (hidden 16 -> 12)
COUNTS = {"heads": 2, "mlp": 12, "hidden": 12}


def _model(dtype):
    torch.manual_seed(0)
    return tiny_llama(random_norms=True, **SHAPE).to(dtype)


def _export(dtype, uniform):
    model = _model(dtype)
    pruner = DMSPruner(model, 0.5, uniform=uniform, prune=("heads", "mlp", "hidden"))
    torch.manual_seed(1)
    set_structure(pruner, COUNTS)
    exported = pruner.export() if uniform else DMSLlamaForCausalLM.from_pruned(pruner)
    return model, pruner, exported


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "from_pruned"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_export_is_cast_once_and_matches_hard_masks(dtype, uniform):
    model, pruner, exported = _export(dtype, uniform)
    assert exported.dtype == dtype
    # every exported weight is within one ulp of its exact (fp64) value: rescaled in fp32, cast once
    _, ref_pruner, ref_export = _export(torch.float64, uniform)
    for (name, got), (_, exact) in zip(exported.state_dict().items(), ref_export.state_dict().items()):
        torch.testing.assert_close(got.double(), exact, rtol=torch.finfo(dtype).eps, atol=0, msg=name)
    x = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    reference = hard_logits(pruner, model, x).float()
    with torch.no_grad():
        got = exported(x).logits.float()
    # the dtype's resolution: how far the hard-masked model itself is from its fp64 self, plus one ulp at |logits|
    noise = (reference - hard_logits(ref_pruner, _model(torch.float64), x).float()).abs().max()
    ulp = torch.finfo(dtype).eps * float(reference.abs().max())
    assert float((got - reference).abs().max()) <= 2 * float(noise) + ulp


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "from_pruned"])
def test_fp64_export_keeps_fp64_precision(uniform):
    """Before: the export loaded an fp64 model's weights into an fp32 model, so they came back fp32-rounded."""
    import math

    model = _model(torch.float64)
    with torch.no_grad():  # weights an fp32 round trip would change
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    pruner = DMSPruner(model, 0.5, uniform=uniform, prune=("heads", "mlp", "hidden"))
    torch.manual_seed(1)
    set_structure(pruner, COUNTS)
    exported = pruner.export() if uniform else DMSLlamaForCausalLM.from_pruned(pruner)
    assert exported.dtype == torch.float64
    s, source = pruner.hard_structure(), model.state_dict()
    got = exported.state_dict()
    hidden, mlp = s.hidden, s.mlp_channels[0]
    assert torch.equal(got["model.embed_tokens.weight"], source["model.embed_tokens.weight"][:, hidden])
    assert torch.equal(got["model.layers.0.mlp.down_proj.weight"],
                       source["model.layers.0.mlp.down_proj.weight"][hidden][:, mlp])
    scale = math.sqrt(SHAPE["hidden_size"] / COUNTS["hidden"])  # w' = w·sqrt(H/H'), computed in fp64
    assert torch.equal(got["model.norm.weight"], source["model.norm.weight"][hidden] * scale)
    x = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # LlamaRMSNorm computes its variance in fp32 even in an fp64 model
        assert float((exported(x).logits - hard_logits(pruner, model, x)).abs().max()) <= 1e-5
