"""Learning rates of their own for the routing and the λ parameters of partially dynamic models (``docs/pad.md``,
"## Learning rates").

An upcycled MoE starts with a *new* router next to pre-trained experts, and a PAD layer with ``φ = 0``
(``λ_s = λ_d = 1``). Both may want a larger step than the pre-trained weights: ``lr_router = router_lr_scale ·
lr`` and ``lr_λ = lambda_lr_scale · lr``, following the same schedule (warm-up, decay) as every other group.

:func:`scale_pad_learning_rates` splits an optimizer's param groups accordingly (before its first step);
:class:`PADTrainerMixin` / :class:`PADTrainer` do it in ``create_optimizer``, so the scheduler is built over the final
groups and a resumed run finds the same groups in the same order::

    trainer = PADTrainer(model=model, args=args, train_dataset=train, callbacks=[IMPCallback()],
                         router_lr_scale=10.0, lambda_lr_scale=10.0)
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer

from ..core.routing import TopKRouter
from ..core.validation import check_number
from .conv import KernelAttention
from .interface import PartiallyDynamicLayer

__all__ = ["PADTrainer", "PADTrainerMixin", "pad_parameter_kinds", "scale_pad_learning_rates"]

ROUTING_MODULES = (TopKRouter, KernelAttention)
"""Modules whose parameters are the routing (the MoE router, dynamic convolution's kernel attention)."""


def pad_parameter_kinds(model: nn.Module) -> dict[int, str]:
    """``id(parameter) → "router" | "lambda"`` for the routing parameters and the ``φ`` of every partially dynamic
    layer of ``model`` (other parameters are absent)."""
    kinds: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, ROUTING_MODULES):
            for param in module.parameters():
                kinds[id(param)] = "router"
        elif isinstance(module, PartiallyDynamicLayer) and isinstance(getattr(module, "phi", None), nn.Parameter):
            kinds[id(module.phi)] = "lambda"
    return kinds


def _check_scale(name: str, value: float) -> float:
    check_number(name, value, gt=0)
    return float(value)


def scale_pad_learning_rates(optimizer: torch.optim.Optimizer, model: nn.Module, router_lr_scale: float = 1.0,
                             lambda_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Move the routing and λ parameters of every param group into groups of their own (same hyper-parameters,
    ``lr`` × the scale), in place, and return ``optimizer``.

    Groups are added in a fixed order (per original group: router, then λ), so the same model and optimizer always
    give the same groups: a checkpointed optimizer state loads back. Scales of 1 leave the optimizer unchanged.
    Raises ``ValueError`` for a scale that is not a finite number > 0, or for an optimizer that has already
    stepped (its state would no longer match its groups).
    """
    scales = {"router": _check_scale("router_lr_scale", router_lr_scale),
              "lambda": _check_scale("lambda_lr_scale", lambda_lr_scale)}
    if all(scale == 1.0 for scale in scales.values()):
        return optimizer
    if len(optimizer.state) > 0:
        raise ValueError("scale_pad_learning_rates: the optimizer has already stepped; split its groups before the "
                         "first step")
    kinds = pad_parameter_kinds(model)
    new_groups = []
    for group in optimizer.param_groups:
        moved: dict[str, list] = {"router": [], "lambda": []}
        kept = []
        for param in group["params"]:
            kind = kinds.get(id(param))
            (moved[kind] if kind is not None and scales[kind] != 1.0 else kept).append(param)
        group["params"] = kept
        for kind in ("router", "lambda"):
            if moved[kind]:
                settings = {k: v for k, v in group.items() if k != "params"}
                new_groups.append({**settings, "params": moved[kind], "lr": group["lr"] * scales[kind],
                                   "pad_kind": kind})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for group in new_groups:
        optimizer.add_param_group(group)
    return optimizer


class PADTrainerMixin:
    """Gives the routing and λ parameters their own learning rates in the ``Trainer`` it is mixed into.

    Args (keyword, beyond the Trainer's):
        router_lr_scale: the routers' (and kernel attentions') lr as a multiple of ``args.learning_rate``.
        lambda_lr_scale: the λ parameters' (``φ``) lr as a multiple of ``args.learning_rate``.
    """

    def __init__(self, *args, router_lr_scale: float = 1.0, lambda_lr_scale: float = 1.0, **kwargs):
        self.router_lr_scale = _check_scale("router_lr_scale", router_lr_scale)
        self.lambda_lr_scale = _check_scale("lambda_lr_scale", lambda_lr_scale)
        super().__init__(*args, **kwargs)

    def create_optimizer(self, *args, **kwargs):
        # Before the scheduler is built (create_optimizer_and_scheduler calls this first), so the scheduler's
        # base learning rates are the scaled ones.
        optimizer = super().create_optimizer(*args, **kwargs)
        return scale_pad_learning_rates(optimizer, self.model, self.router_lr_scale, self.lambda_lr_scale)


class PADTrainer(PADTrainerMixin, Trainer):
    """``transformers.Trainer`` with :class:`PADTrainerMixin`."""
