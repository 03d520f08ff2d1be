"""The partially dynamic layer interface: what Iterative Mode Partition needs of a layer (``docs/pad.md``,
"## Iterative Mode Partition").

:mod:`hf_dynamic.pad.imp` works on any module that implements :class:`PartiallyDynamicLayer`, through these
methods only, so a partially dynamic layer of another kind (a convolution, an attention projection) is partitioned
by the same IMP, unchanged. :class:`~hf_dynamic.pad.layers.PartialDynamicFFN` (the MoE FFN) and
:class:`~hf_dynamic.pad.conv.PartialDynamicConv2d` are two, both built on
:class:`~hf_dynamic.pad.partial.PartiallyDynamicModule`.

The mask ``M`` is seen as one flat vector of :attr:`~PartiallyDynamicLayer.num_partition_entries` entries
(``True`` = dynamic); how the layer maps it onto its weights is its own business. One IMP scoring round is::

    layer.imp_begin()                     # the mask becomes a continuous leaf tensor
    loss = model(**batch).loss            # (any number of batches)
    inputs = layer.imp_inputs()
    layer.imp_accumulate(torch.autograd.grad(loss, inputs))
    layer.imp_gradients(kind)             # the sums a score reads (all-reduced in place across ranks)
    scores = layer.imp_scores(kind)       # flat, like partition_mask()
    layer.imp_end()
    layer.set_partition_mask(new_mask)

and, once the masks are final, ``layer.finalize_()`` makes the storage compact.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PartiallyDynamicLayer(Protocol):
    """A layer whose weight entries are split by a mask into a static part and a dynamic part."""

    layer_idx: int
    """The layer's key in IMP's summary and in ``config.pad_partition``."""

    @property
    def partitionable(self) -> bool:
        """False for a layer with nothing to partition (every entry dynamic, e.g. a plain MoE)."""

    @property
    def num_partition_entries(self) -> int:
        """Length of the flat mask."""

    def partition_mask(self) -> torch.Tensor:
        """The current mask, a flat bool vector (a copy)."""

    def set_partition_mask(self, flat_mask: torch.Tensor) -> None:
        """Set the mask in place from a flat bool vector."""

    def experts_tied(self) -> bool:
        """True while every dynamic weight equals the static one (then ``dL/dM`` is identically zero)."""

    def imp_begin(self, relaxed_mask: torch.Tensor | None = None) -> None:
        """Start scoring: the mask becomes a continuous leaf tensor (default: the current 0/1 mask)."""

    def imp_inputs(self) -> list[torch.Tensor]:
        """After a forward: the tensors whose gradients scoring needs (the mask leaf first)."""

    def imp_accumulate(self, grads: list[torch.Tensor]) -> None:
        """Add one batch's gradients (in :meth:`imp_inputs` order; zeros where unused) to the running sums."""

    def imp_gradients(self, kind: str) -> list[torch.Tensor]:
        """The running gradient sums a score of ``kind`` reads, to be summed in place across ranks."""

    def imp_scores(self, kind: str) -> torch.Tensor:
        """Flat scores (layout of :meth:`partition_mask`): ``"snip"`` or ``"grad_variance"``."""

    def imp_end(self) -> None:
        """Stop scoring (idempotent)."""

    def finalize_(self) -> dict:
        """Drop the redundant entries in place; return the dynamic-entry counts to record in the config."""
