"""Importance scores shared by every method (one home per idea).

- SNIP connection sensitivity |dL/dM| (Lee et al. 2019), used by PAD-Net's Iterative Mode Partition.
- Cross-expert gradient variance (PAD-Net's IMP on an upcycled model).
- Taylor importance with an exponential moving average (DMS, ``docs/dms.md``, "## Differentiable top-k").

Add functions here; do not re-create this file (several methods contribute to it).
"""


# --- Taylor importance, EMA (DMS, docs/dms.md) ------------------------------------------------------------------
def taylor_importance_ema_(importance, mask, mask_grad, decay: float = 0.99, grad_scale=None):
    """In-place Taylor importance EMA of DMS (``docs/dms.md``): ``c ← decay·c + (1 − decay)·(m · ∂L/∂m)²``.

    ``importance``, ``mask`` and ``mask_grad`` have the same shape (one entry per prunable element). ``m·∂L/∂m`` is
    the first-order Taylor estimate of the loss change when the element is removed.

    Mixed precision (``docs/dms.md``, "## Mixed precision"): the score is computed in fp32 (fp64 for an fp64
    ``importance``) whatever the dtype of ``mask_grad``; ``grad_scale`` (a number or 0-dim tensor, e.g. the loss
    scale of a ``GradScaler``) is divided out of ``mask_grad`` first; and when any entry of the score is not finite
    (an overflowed fp16 step) the update is skipped and ``importance`` left unchanged, without a host sync. Returns
    a 0-dim bool tensor: whether the update was applied.
    """
    import torch

    if importance.shape != mask_grad.shape or importance.shape != mask.shape:
        raise ValueError(
            f"importance {tuple(importance.shape)}, mask {tuple(mask.shape)} and mask_grad "
            f"{tuple(mask_grad.shape)} must have the same shape"
        )
    with torch.no_grad():
        compute = torch.promote_types(importance.dtype, torch.float32)
        grad = mask_grad.to(compute)
        if grad_scale is not None:
            grad = grad / torch.as_tensor(grad_scale, dtype=compute, device=grad.device)
        score = (mask.to(compute) * grad).pow(2)
        finite = torch.isfinite(score).all()
        updated = importance.to(compute) * decay + score * (1.0 - decay)
        importance.copy_(torch.where(finite, updated, importance.to(compute)))
    return finite


# --- SNIP and cross-expert gradient variance (PAD-Net IMP, docs/pad.md) ---------------------------------------
import torch  # noqa: E402


def snip_score(mask_grad: torch.Tensor) -> torch.Tensor:
    """SNIP connection sensitivity ``s_j = |dL/dM_j|`` (Lee et al. 2019; PAD-Net IMP).

    ``mask_grad`` is the gradient of the loss w.r.t. the continuous relaxation of the mask, summed over the
    scoring batches (the full-batch gradient), so the absolute value is taken after accumulation.
    """
    return mask_grad.abs()


def expert_gradient_variance(expert_grads: torch.Tensor, expert_dim: int = 0) -> torch.Tensor:
    """Cross-expert gradient variance ``s_j = sum_i (g_ij - mean_i g_ij)^2`` (PAD-Net's IMP on an upcycled
    model).

    ``expert_grads`` holds ``g_ij = dL/dW_ij``, the gradient reaching expert ``i``'s computed weight at entry ``j``
    (summed over the scoring batches), experts along ``expert_dim``. The score is the one-step loss decrease of
    letting the experts differ at ``j`` (``eta * sum_i g_ij^2``) minus that of one shared static value
    (``eta * (sum_i g_ij)^2 / E``); it is the score to use when ``|dL/dM|`` is identically zero because every expert
    still equals the static weight.
    """
    mean = expert_grads.mean(dim=expert_dim, keepdim=True)
    return (expert_grads - mean).pow(2).sum(dim=expert_dim)


def normalize_scores(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """PAD-Net's normalisation ``s / sum(s)`` over all the given score tensors jointly.

    The sum is over finite entries; an all-zero set of scores is returned unchanged.
    """
    total = sum(torch.nan_to_num(s.float(), neginf=0.0, posinf=0.0).sum() for s in scores)
    if float(total) == 0.0:
        return [s.float() for s in scores]
    return [s.float() / total for s in scores]
