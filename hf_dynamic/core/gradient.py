"""Gradient-shaping primitives: identity in the forward pass, a change of the gradient in the backward pass.

- :func:`scale_gradient`: multiply the backward gradient by a constant. BoostNet's gradient rescaling
  (docs/boost.md, "## Boosted exits"; after the "gradient equilibrium" of Li et al., ICCV 2019) is built from it.
"""

import torch


class GradientScale(torch.autograd.Function):
    """``y = x`` forward; ``dL/dx = factor · dL/dy`` backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = float(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` unchanged; the gradient flowing back through it is multiplied by ``factor``.

    A no-op (returns ``x`` itself) when ``factor == 1`` or when autograd is not recording.
    """
    if factor == 1 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return GradientScale.apply(x, factor)


__all__ = ["GradientScale", "scale_gradient"]
