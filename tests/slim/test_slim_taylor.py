"""First-order Taylor importance: equals |dL/dm| of an explicit unit mask, orders the units, preserves the function."""

import pytest
import torch
from slim_testing import tiny_bert, tiny_llama, tokens

from hf_dynamic.slim.modeling import make_slimmable, slim_layers, taylor_importance


def batches():
    x = tokens(2, 10)
    return [{"input_ids": x, "labels": x}, {"input_ids": x.flip(1), "labels": x.flip(1)}]


def mask_gradients(model, batches):
    """|dL/dm| of masks m (ones) gating every head group's and FFN channel's input to the output projections."""
    masks, handles = [], []
    for layer in slim_layers(model):
        mh = torch.ones(layer.num_groups, requires_grad=True)
        mf = torch.ones(layer.intermediate_size, requires_grad=True)
        cols = layer.cols_per_group
        handles.append(layer.linear(layer.head_out).register_forward_pre_hook(
            lambda m, args, mh=mh, cols=cols: (args[0] * mh.repeat_interleave(cols),)))
        handles.append(layer.linear(layer.ffn_out).register_forward_pre_hook(lambda m, args, mf=mf: (args[0] * mf,)))
        masks.append((mh, mf))
    for batch in batches:
        model(**batch).loss.backward()
    for h in handles:
        h.remove()
    return [(mh.grad.abs(), mf.grad.abs()) for mh, mf in masks]


def test_taylor_score_is_the_unit_mask_gradient():
    model = tiny_llama()
    scores = taylor_importance(model, batches())
    assert all(p.grad is None for p in model.parameters())  # .grad untouched
    reference = mask_gradients(model, batches())
    for (h, f), (rh, rf) in zip(scores, reference):
        torch.testing.assert_close(h, rh, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(f, rf, atol=1e-5, rtol=1e-4)


def test_taylor_ordering_preserves_function_and_sorts():
    model = tiny_llama()
    x = tokens()
    with torch.no_grad():
        before = model(x).logits
    make_slimmable(model, importance="taylor", calibration_batches=batches())
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, before, atol=1e-5, rtol=1e-5)
    for h, f in taylor_importance(model, batches()):
        assert torch.all(h[:-1] >= h[1:] - 1e-6) and torch.all(f[:-1] >= f[1:] - 1e-6)


@pytest.mark.parametrize("kw, message", [
    (dict(importance="fisher"), "importance must be one of"),
    (dict(importance="taylor"), "needs calibration_batches"),
    (dict(importance="taylor", calibration_batches=[]), "calibration_batches is empty"),
    (dict(importance="taylor", calibration_batches=[{"input_ids": tokens()}]), "include 'labels'"),
    (dict(reorder="no"), "reorder must be a bool"),
])
def test_bad_importance_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        make_slimmable(tiny_bert() if "calibration_batches" not in kw else tiny_llama(), **kw)
