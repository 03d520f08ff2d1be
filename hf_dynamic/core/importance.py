"""Importance scores shared by every method (one home per idea).

- SNIP connection sensitivity |dL/dM| (Lee et al. 2019), used by PAD-Net's Iterative Mode Partition.
- Cross-expert gradient variance (PAD-Net's IMP on an upcycled model).
- Taylor importance with an exponential moving average (DMS, ``docs/dms.md``, "## Differentiable top-k").

Add functions here; do not re-create this file (several methods contribute to it).
"""


# --- Taylor importance, EMA (DMS, docs/dms.md) ------------------------------------------------------------------
def taylor_importance_ema_(importance, mask, mask_grad, decay: float = 0.99):
    """In-place Taylor importance EMA of DMS (``docs/dms.md``): ``c ← decay·c + (1 − decay)·(m · ∂L/∂m)²``.

    ``importance``, ``mask`` and ``mask_grad`` have the same shape (one entry per prunable element); the update is
    done in ``importance``'s dtype and returned. ``m·∂L/∂m`` is the first-order Taylor estimate of the loss change
    when the element is removed.
    """
    import torch

    if importance.shape != mask_grad.shape or importance.shape != mask.shape:
        raise ValueError(
            f"importance {tuple(importance.shape)}, mask {tuple(mask.shape)} and mask_grad "
            f"{tuple(mask_grad.shape)} must have the same shape"
        )
    with torch.no_grad():
        score = (mask.to(importance.dtype) * mask_grad.to(importance.dtype)).pow(2)
        importance.mul_(decay).add_(score, alpha=1.0 - decay)
    return importance


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
