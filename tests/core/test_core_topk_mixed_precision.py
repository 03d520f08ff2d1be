"""DMS's Taylor importance under mixed precision (docs/dms.md, "## Mixed precision"): non-finite gradients are
skipped (and logged once), the loss scale is divided out, the EMA and the keep ratio stay fp32, and the mask
gradient is reduced in fp32 whatever the activations' dtype."""

import torch
from transformers.testing_utils import CaptureLogger

from hf_dynamic.core import topk as topk_module
from hf_dynamic.core.topk import DifferentiableTopK, apply_mask


def _step(op, w, scale=1.0, poison=False):
    m = op()
    loss = ((m * w).sum() ** 2) * scale
    if poison:
        loss = loss * torch.tensor(float("inf"))
    loss.backward()


def test_an_inf_gradient_is_skipped_and_logged_once():
    torch.manual_seed(0)
    ws = [torch.randn(8) for _ in range(6)]
    clean, poisoned = DifferentiableTopK(8, init_keep_ratio=0.7), DifferentiableTopK(8, init_keep_ratio=0.7)
    for w in ws[:3]:
        _step(clean, w)
        _step(poisoned, w)
    with CaptureLogger(topk_module.logger) as captured:
        _step(poisoned, ws[0], poison=True)  # an overflowed step: inf (and NaN) in dL/dm
        _step(poisoned, ws[1], poison=True)
    assert torch.isfinite(poisoned.importance).all()
    assert torch.equal(poisoned.importance, clean.importance)
    assert captured.out.count("non-finite") == 1
    assert int(poisoned.num_skipped) == 2 and int(poisoned.num_updates) == 3
    for w in ws[3:]:
        _step(clean, w)
        _step(poisoned, w)
    assert torch.equal(poisoned.normalized_importance(), clean.normalized_importance())
    torch.testing.assert_close(poisoned.importance, clean.importance, rtol=0, atol=0)


def test_loss_scale_is_divided_out():
    torch.manual_seed(0)
    ws = [torch.randn(8) for _ in range(5)]
    plain, scaled = DifferentiableTopK(8, init_keep_ratio=0.7), DifferentiableTopK(8, init_keep_ratio=0.7)
    scales = [2.0 ** 16, 2.0 ** 15, 2.0 ** 15, 2.0 ** 3, 2.0 ** 10]  # a scaler that backs off and grows
    current = {"scale": None}
    scaled.set_loss_scale_source(lambda: current["scale"])
    for w, s in zip(ws, scales):
        _step(plain, w)
        current["scale"] = s
        _step(scaled, w, scale=s)
    torch.testing.assert_close(scaled.importance, plain.importance, rtol=1e-6, atol=0)


def test_grad_scaler_fp16_run_ranks_like_fp32():
    """A plain fp16-autocast loop with torch's GradScaler on the CPU, its scale growing every 2 steps (2^10 to
    2^19), gives the fp32 run's importance within fp16's resolution: the scale is divided out at every step."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    lin = torch.nn.Linear(16, 4)
    for p in lin.parameters():
        p.requires_grad_(False)
    fp32, fp16 = DifferentiableTopK(16, init_keep_ratio=0.6), DifferentiableTopK(16, init_keep_ratio=0.6)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)
    fp16.set_loss_scale_source(scaler)
    opt16 = torch.optim.SGD([fp16.keep_ratio], lr=0.0)
    for step in range(20):
        batch = slice(step % 4 * 16, step % 4 * 16 + 16)
        torch.nn.functional.mse_loss(lin(apply_mask(x[batch], fp32())), y[batch]).backward()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(lin(apply_mask(x[batch], fp16())).float(), y[batch])
        scaler.scale(loss).backward()
        scaler.step(opt16)
        scaler.update()
    assert scaler.get_scale() >= 2.0 ** 18 and int(fp16.num_skipped) == 0
    assert fp16.importance.dtype == torch.float32
    assert torch.equal(fp16.normalized_importance(), fp32.normalized_importance())
    torch.testing.assert_close(fp16.importance, fp32.importance, rtol=1e-2, atol=0)


def test_importance_and_keep_ratio_stay_fp32_and_mask_grad_is_fp32():
    op = DifferentiableTopK(6, init_keep_ratio=0.7)
    op.importance.copy_(torch.tensor([1.0, 1.0001, 2.0, 3.0, 1e-9, 7.0]))
    before = op.importance.clone()
    op.to(torch.bfloat16)
    assert op.importance.dtype == torch.float32 and op.keep_ratio.dtype == torch.float32
    assert torch.equal(op.importance, before)  # not rounded through bf16 on the way
    x = torch.randn(5, 6).to(torch.bfloat16)
    mask = torch.full((6,), 0.5, requires_grad=True)
    out = apply_mask(x, mask)
    assert out.dtype == torch.bfloat16
    out.float().pow(2).sum().backward()
    exact = (2 * out.float() * x.float()).sum(0)
    assert mask.grad.dtype == torch.float32
    torch.testing.assert_close(mask.grad, exact, rtol=1e-6, atol=1e-6)


def test_the_apply_seam_is_still_where_casts_go():
    """``DifferentiableTopK._apply`` extends torch's ``Module._apply(fn, recurse)``: fail loudly if torch renames it,
    changes its parameters, or stops routing ``Module.to`` / ``.bfloat16()`` through it."""
    import inspect

    assert list(inspect.signature(torch.nn.Module._apply).parameters)[:3] == ["self", "fn", "recurse"]
    calls = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def _apply(self, fn, recurse=True):
            calls.append(recurse)
            return super()._apply(fn, recurse)

    probe = Probe()
    probe.to(torch.bfloat16)
    probe.bfloat16()
    assert len(calls) == 2 and probe.w.dtype == torch.bfloat16
