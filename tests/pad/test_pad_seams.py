"""The private transformers seams PAD keeps because no public API does the job (each is named, with the reason, at
its use; ``docs/pad.md``, "## Expert kernel"). Each test fails loudly when transformers changes the seam, rather than
letting the code behind it go silently wrong."""

import inspect

import pytest
import torch
from transformers import PreTrainedModel
from transformers.integrations import moe

from hf_dynamic import PartialMoEBertConfig, PartialMoEBertForSequenceClassification
from hf_dynamic.pad.experts import _grouped_mm


def grouped_reference(x, weight, offsets):
    starts = [0, *offsets.tolist()[:-1]]
    return torch.cat([x[s:e] @ weight[i] for i, (s, e) in enumerate(zip(starts, offsets.tolist()))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_mm_seams_compute_a_grouped_matmul_with_gradients(dtype):
    """``moe._grouped_mm(input, weight, offs)`` and ``torch.ops.transformers.grouped_mm_fallback`` (float64): same
    names, same arguments, ``x[rows of group e] @ weight[e]``, and differentiable (the kernel's backward)."""
    assert list(inspect.signature(moe._grouped_mm).parameters)[:3] == ["input", "weight", "offs"]
    assert hasattr(torch.ops.transformers, "grouped_mm_fallback")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, dtype=dtype, generator=g, requires_grad=True)
    weight = torch.randn(3, 8, 16, dtype=dtype, generator=g, requires_grad=True)
    offsets = torch.tensor([3, 3, 10], dtype=torch.int32)  # an empty group in the middle
    out = _grouped_mm(x, weight, offsets)
    expected = grouped_reference(x, weight, offsets)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, expected, **tolerance)
    grads = torch.autograd.grad(out.square().sum(), [x, weight])
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), [x, weight])):
        torch.testing.assert_close(got, want, **tolerance)


def test_experts_implementation_hook_is_still_consulted():
    """transformers asks ``_can_set_experts_implementation()`` before switching a model's experts kernel; our
    override says yes. If transformers renames or drops the hook, the override is dead and this fails."""
    assert isinstance(inspect.getattr_static(PreTrainedModel, "_can_set_experts_implementation"), classmethod)
    model = PartialMoEBertForSequenceClassification(PartialMoEBertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        num_experts=2, num_experts_per_tok=1))
    model.set_experts_implementation("eager")
    assert model.config._experts_implementation == "eager"
    # without the override, transformers' source heuristic refuses: the hook is what makes switching possible
    assert PreTrainedModel._can_set_experts_implementation.__func__(type("Plain", (PreTrainedModel,), {})) is False
