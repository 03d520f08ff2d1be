"""Differentiable top-k of DMS (``docs/dms.md``, "## Differentiable top-k"; Liu et al., ICML 2024, arXiv
2405.07194, Sec. 3.2).

One structural hyper-parameter with ``N`` elements (channels of a layer, heads, blocks) gets one learnable keep
ratio ``e`` (the paper's pruning ratio is ``a = 1 - e``). The elements' importance ``c`` is not learned by
gradient: it is a Taylor importance kept as an exponential moving average (see
:func:`hf_dynamic.core.importance.taylor_importance_ema_`). The mask is

    c'_i = (1/N) · #{ j : c_j ≤ c_i }               importance normalisation (uniform in (0, 1])
    m_i  = sigmoid( λ · N · (c'_i − (1 − e)) )      soft mask (search)
    m_i ≥ 0.5                                       hard mask (export)

with ``e`` clamped to ``[1/(2N), 1]`` (so at least one element is always kept).

Ties in ``c`` (e.g. before any importance was accumulated) are broken by element index (a stable sort), so ``c'`` is
always a permutation of ``{1/N, 2/N, ..., 1}`` and a hard mask keeps a well-defined number of elements.

A :class:`DifferentiableTopK` may hold a *batch* of independent rows (``shape``): e.g. one row per decoder layer,
each ranking its own elements. The keep ratio then has shape ``shape`` (per-row ratios) or ``()`` (one ratio shared
by every row: every row keeps the same number of elements, each choosing *which* by its own importance).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.utils import logging

from .importance import taylor_importance_ema_
from .validation import check_number

logger = logging.get_logger(__name__)

__all__ = ["DifferentiableTopK", "apply_mask", "normalize_importance", "soft_topk_mask"]


class _ApplyMask(torch.autograd.Function):
    """``x · m`` in ``x``'s dtype; the mask's gradient ``Σ ∂L/∂y · x`` is reduced in fp32 (see :func:`apply_mask`)."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(x, mask)
        return x * mask.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, mask = ctx.saved_tensors
        grad_x = grad * mask.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_mask = None
        if ctx.needs_input_grad[1]:
            compute = torch.promote_types(mask.dtype, torch.float32)
            grad_mask = (grad.to(compute) * x.to(compute)).sum_to_size(mask.shape)
        return grad_x, grad_mask


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * mask`` (``mask`` broadcast against ``x``), returned in ``x``'s dtype, with ``∂L/∂mask`` computed and
    reduced in fp32 whatever ``x``'s dtype (``docs/dms.md``, "## Mixed precision"): under bf16/fp16 activations the
    plain product would round the mask gradient, hence the Taylor importance, to the activation dtype."""
    if not (torch.is_grad_enabled() and mask.requires_grad) or mask.dtype == x.dtype:
        return x * mask.to(x.dtype)
    return _ApplyMask.apply(x, mask)


def normalize_importance(importance: torch.Tensor) -> torch.Tensor:
    """Importance normalisation of DMS (``docs/dms.md``, "## Differentiable top-k"):
    ``c'_i = #{j : c_j ≤ c_i} / N`` along the last dim.

    Ties are broken by index (stable sort), so the result is a permutation of ``{1/N, ..., 1}`` per row: uniformly
    distributed whatever the distribution of ``importance``.
    """
    n = importance.shape[-1]
    order = torch.argsort(importance, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    arange = torch.arange(1, n + 1, device=importance.device).expand_as(order)
    ranks.scatter_(-1, order, arange)
    return ranks.to(torch.float32) / n


def soft_topk_mask(normalized: torch.Tensor, keep_ratio: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft mask of DMS (``docs/dms.md``, "## Differentiable top-k"): ``sigmoid(λ·N·(c' − (1 − e)))``;
    ``temperature`` is ``λ``.

    ``keep_ratio`` broadcasts against ``normalized[..., 0]`` (one ratio per row, or one for all rows).
    """
    n = normalized.shape[-1]
    return torch.sigmoid(temperature * n * (normalized - (1.0 - keep_ratio.unsqueeze(-1))))


class DifferentiableTopK(nn.Module):
    """The differentiable top-k operator of DMS (``docs/dms.md``, "## Differentiable top-k") with Taylor importance
    (EMA decay 0.99).

    Args:
        num_elements: ``N``, the number of elements a row ranks.
        rows: shape of the batch of independent rows (``()`` for a single row), e.g. ``(num_layers,)``.
        shared_keep_ratio: one keep ratio for every row (``True``) or one per row (``False``).
        keep_ratio_dims: overrides ``shared_keep_ratio``: the number of leading ``rows`` dims that get their own
            ratio (e.g. ``rows=(layers, groups)`` with ``keep_ratio_dims=1``: one ratio per layer, shared by its
            groups).
        temperature: ``λ`` (the soft mask's slope is ``λ·N``). The paper uses 1 for channels, 4 for heads/blocks.
        init_keep_ratio: initial ``e`` (1.0 = start from the full model).
        ema_decay: decay of the Taylor-importance moving average (0.99 in the paper).

    ``forward()`` returns the soft mask (shape ``rows + (N,)``) and, when gradients are enabled, arranges for the
    Taylor importance to be updated from ``∂L/∂m`` during the backward pass (a tensor hook), so a plain training
    loop needs no extra call.
    """

    def __init__(
        self,
        num_elements: int,
        rows: tuple[int, ...] = (),
        shared_keep_ratio: bool = True,
        keep_ratio_dims: int | None = None,
        temperature: float = 1.0,
        init_keep_ratio: float = 1.0,
        ema_decay: float = 0.99,
    ):
        super().__init__()
        check_number("num_elements", num_elements, integer=True, ge=1)
        check_number("init_keep_ratio", init_keep_ratio, gt=0, le=1)
        check_number("temperature", temperature, gt=0)
        check_number("ema_decay", ema_decay, ge=0, lt=1)
        self.num_elements = int(num_elements)
        self.rows = tuple(int(r) for r in rows)
        self.shared_keep_ratio = bool(shared_keep_ratio)
        self.temperature = float(temperature)
        self.ema_decay = float(ema_decay)
        if keep_ratio_dims is None:
            keep_ratio_dims = 0 if self.shared_keep_ratio else len(self.rows)
        if not 0 <= int(keep_ratio_dims) <= len(self.rows):
            raise ValueError(f"keep_ratio_dims must be in [0, {len(self.rows)}], got {keep_ratio_dims}")
        self.keep_ratio_dims = int(keep_ratio_dims)
        self.shared_keep_ratio = self.keep_ratio_dims == 0
        ratio_shape = self.rows[: self.keep_ratio_dims]
        self.keep_ratio = nn.Parameter(torch.full(ratio_shape, float(init_keep_ratio)))
        self.register_buffer("importance", torch.zeros(*self.rows, self.num_elements))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_skipped", torch.zeros((), dtype=torch.long), persistent=False)  # diagnostic
        self.loss_scale_source = None

    # A private seam kept on purpose: torch has no public hook to exempt some tensors of a module from a dtype cast
    # (``Module.to`` / ``.half()`` / ``.bfloat16()`` all funnel through ``Module._apply(fn, recurse)``, the method
    # subclasses are expected to extend). tests/core/test_core_topk_mixed_precision.py fails loudly if torch renames
    # it, changes its signature or stops routing ``.to`` through it.
    def _apply(self, fn, recurse=True):
        """Moves and casts like any module, except that the keep ratio and the importance stay fp32 (or fp64): a
        ``.to(torch.bfloat16)`` would quantise ``e`` and the Taylor EMA (``docs/dms.md``, "## Mixed precision")."""
        before = {name: getattr(self, name).data for name in ("keep_ratio", "importance")}
        super()._apply(fn, recurse)
        for name, original in before.items():
            tensor = getattr(self, name)
            if tensor.dtype != original.dtype:  # restore the unrounded values, on the new device
                tensor.data = original.to(tensor.device)
        return self

    # ----------------------------------------------------------------------------------------------- keep ratio
    @property
    def min_keep_ratio(self) -> float:
        """``1/(2N)``: the lower clamp of ``e`` (keeps at least one element)."""
        return 1.0 / (2 * self.num_elements)

    def clamped_keep_ratio(self) -> torch.Tensor:
        """``e`` clamped to ``[1/(2N), 1]``, with a straight-through gradient (so ``e`` never gets stuck outside)."""
        e = self.keep_ratio
        return e + (e.detach().clamp(self.min_keep_ratio, 1.0) - e.detach())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the parameter ``e`` onto ``[1/(2N), 1]`` in place (call after an optimizer step)."""
        self.keep_ratio.clamp_(self.min_keep_ratio, 1.0)

    @torch.no_grad()
    def set_keep_count(self, count) -> None:
        """Set ``e`` so that the hard mask keeps exactly ``count`` elements per row (``e = (count − ½)/N``)."""
        count = torch.as_tensor(count, dtype=torch.float32, device=self.keep_ratio.device)
        if (count < 1).any() or (count > self.num_elements).any():
            raise ValueError(f"count must be in [1, {self.num_elements}], got {count.tolist()}")
        self.keep_ratio.copy_(torch.broadcast_to((count - 0.5) / self.num_elements, self.keep_ratio.shape))

    # ---------------------------------------------------------------------------------------------------- masks
    def normalized_importance(self) -> torch.Tensor:
        """``c'`` of the current importance (``docs/dms.md``, "## Differentiable top-k")."""
        return normalize_importance(self.importance)

    def soft_mask(self) -> torch.Tensor:
        """``sigmoid(λ·N·(c' − (1 − e)))``, shape ``rows + (N,)``, differentiable in ``e``."""
        e = self.clamped_keep_ratio()
        e = e.reshape(e.shape + (1,) * (len(self.rows) - self.keep_ratio_dims)).expand(self.rows)
        return soft_topk_mask(self.normalized_importance(), e, self.temperature)

    @torch.no_grad()
    def hard_mask(self) -> torch.Tensor:
        """``1[m ≥ 0.5]`` as floats: the mask an export implements."""
        return (self.soft_mask() >= 0.5).to(self.importance.dtype)

    @torch.no_grad()
    def hard_mask_with_count(self, count) -> torch.Tensor:
        """A hard mask keeping the ``count`` most important elements of each row (for rounded exports).

        ``count`` is an int (every row) or an integer tensor of shape ``rows`` (one count per row).
        """
        count = torch.as_tensor(count, device=self.importance.device)
        if (count < 1).any() or (count > self.num_elements).any():
            raise ValueError(f"count must be in [1, {self.num_elements}], got {count.tolist()}")
        threshold = 1.0 - (count.to(torch.float32) - 0.5) / self.num_elements
        return (self.normalized_importance() > threshold.unsqueeze(-1)).to(self.importance.dtype)

    def kept_counts(self) -> torch.Tensor:
        """Number of elements the hard mask keeps in each row (integer tensor of shape ``rows``)."""
        return self.hard_mask().sum(-1).long()

    def forward(self, track_importance: bool = True) -> torch.Tensor:
        """The soft mask; with gradients enabled its ``∂L/∂m`` updates the Taylor importance on backward."""
        mask = self.soft_mask()
        if track_importance and torch.is_grad_enabled():
            self.track(mask)
        return mask

    # ----------------------------------------------------------------------------------------------- importance
    def track(self, mask: torch.Tensor) -> torch.Tensor:
        """Register a backward hook on ``mask`` that applies the Taylor EMA update with its gradient.

        ``mask`` must have shape ``rows + (N,)``. If it does not require grad (e.g. frozen keep ratios) it is
        returned as a fresh leaf that does, so ``∂L/∂m`` is still computed; use the returned tensor.
        """
        if not mask.requires_grad:
            mask = mask.detach().requires_grad_(True)
        values = mask.detach()

        def _update(grad: torch.Tensor) -> None:
            self.update_importance(values, grad)

        mask.register_hook(_update)
        return mask

    def set_ema_decay(self, decay: float) -> None:
        """Set the decay ``d`` of the Taylor-importance moving average (``0.0``: each update replaces ``c``)."""
        check_number("ema_decay", decay, ge=0, lt=1)
        self.ema_decay = float(decay)

    def set_loss_scale_source(self, source) -> None:
        """Where the loss scale of a mixed-precision run is read (``docs/dms.md``, "## Mixed precision"): a
        ``torch.amp.GradScaler``, a callable returning one (or a number, or None), or None (gradients unscaled).

        The scale current at each backward pass is divided out of ``∂L/∂m`` before the Taylor update, so the EMA
        weights every step by its true gradient, as in an fp32 run. ``DMSTrainer`` sets this to its Accelerator's
        scaler; in a plain loop with a ``GradScaler`` call ``DMSPruner.set_loss_scale_source(scaler)``.
        """
        self.loss_scale_source = source

    def loss_scale(self):
        """The loss scale the gradients of the current backward pass carry (None: unscaled)."""
        source = self.loss_scale_source
        if source is not None and not hasattr(source, "get_scale") and callable(source):
            source = source()
        if source is None:
            return None
        if hasattr(source, "get_scale"):  # a GradScaler (its scale is 1.0 when disabled)
            if hasattr(source, "is_enabled") and not source.is_enabled():
                return None
            return source.get_scale()
        return source

    @torch.no_grad()
    def update_importance(self, mask: torch.Tensor, grad: torch.Tensor) -> None:
        """``c ← d·c + (1 − d)·(m·∂L/∂m)²`` (``docs/dms.md``) in fp32, with the loss scale divided out, then count the
        update. A gradient with a non-finite entry (an overflowed fp16 step) leaves ``c`` unchanged, counts in
        :attr:`num_skipped` instead, and is reported once in the log."""
        applied = taylor_importance_ema_(self.importance, mask, grad, decay=self.ema_decay,
                                         grad_scale=self.loss_scale())
        self.num_updates += applied.long()
        self.num_skipped += (~applied).long()
        if not bool(applied):
            logger.warning_once(
                "DMS: a non-finite mask gradient (inf/NaN, e.g. an overflowed fp16 step) was skipped; the Taylor "
                "importance keeps its previous value (counted in DifferentiableTopK.num_skipped)"
            )

    def extra_repr(self) -> str:
        return (
            f"num_elements={self.num_elements}, rows={self.rows}, shared_keep_ratio={self.shared_keep_ratio}, "
            f"temperature={self.temperature}"
        )
