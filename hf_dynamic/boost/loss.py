"""BoostNet's training side (docs/boost.md, "## Boosted exits"): the boosted ensemble
``F_n = t·F_{n-1} + f_n`` with a stop-gradient on F_{n-1}, the gradient rescaling of the backbone trunk, and the
weighted sum of the exits' losses.
"""

from collections.abc import Callable

import torch

from ..core.gradient import scale_gradient


def boosted_prediction(previous, head_logits, temperature: float, boosting: bool = True):
    """F_n = t·stop_grad(F_{n-1}) + f_n (``boosting=True``), or f_n (the joint baseline, and the first exit).

    The stop-gradient does not change the value, so the same tensor serves as exit n's training input
    ``t·stop_grad(F_{n-1}) + f_n`` and as its ensemble prediction F_n.
    """
    if not boosting or previous is None:
        return head_logits
    return temperature * previous.detach() + head_logits


def rescale_trunk(hidden_states: torch.Tensor, remaining: int, enabled: bool = True) -> tuple:
    """Gradient rescaling at an exit with ``remaining`` = N-n+1 exits at or after it (itself included).

    Returns ``(head_input, trunk)``: ``head_input = scale(h, 1/c)`` is what exit n's head reads and
    ``trunk = scale(head_input, c-1)`` what the next layers read, with c = ``remaining``. The gradient reaching the
    layers up to exit n is then ``(1/c)·Σ_{k≥n} ∂L_k/∂h``: the sum over the exits at or after it scaled by
    1/(N-n+1), without compounding. Identity (in value, and in gradient when ``enabled`` is false).
    """
    if not enabled:
        return hidden_states, hidden_states
    head_input = scale_gradient(hidden_states, 1.0 / remaining)
    trunk = scale_gradient(head_input, float(remaining - 1)) if remaining > 1 else head_input
    return head_input, trunk


def boosted_loss(exit_predictions, labels, task_loss: Callable, weights=None) -> tuple:
    """BoostNet's loss ``Σ_n w_n·L(t·stop_grad(F_{n-1}) + f_n, y)``, one backward for all exits.

    ``exit_predictions`` are the F_n of :func:`boosted_prediction`, which already carry the stop-gradient (or are
    the plain f_n of the joint baseline); ``task_loss(prediction, labels)`` is L; ``weights`` the w_n (default 1).
    Returns ``(loss, per_exit_losses)``, the latter detached.
    """
    weights = weights or [1.0] * len(exit_predictions)
    losses = torch.stack([task_loss(prediction, labels) for prediction in exit_predictions])
    return (losses * losses.new_tensor(weights)).sum(), losses.detach()


__all__ = ["boosted_loss", "boosted_prediction", "rescale_trunk"]
