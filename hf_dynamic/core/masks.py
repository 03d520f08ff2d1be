"""Binary masks: exact top-k selection and bit packing (shared by every masking method).

- :func:`topk_mask` / :func:`topk_masks` keep *exactly* ``k`` entries (ties broken by position, so the result is
  deterministic), within one tensor or jointly over several (a "global" selection).
- :func:`pack_bool_mask` / :func:`unpack_bool_mask` store a boolean mask at 1 bit per entry in a ``uint8`` tensor
  (little-endian bit order inside each byte), the storage PAD-Net's finalised element-mode checkpoints use
  (``docs/pad.md``, "## Layouts").
"""

from __future__ import annotations

import math

import torch

from .validation import check_number

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def packed_numel(numel: int) -> int:
    """Number of bytes :func:`pack_bool_mask` uses for a mask of ``numel`` entries."""
    return math.ceil(numel / 8)


def pack_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a boolean mask (any shape) into a 1-D ``uint8`` tensor of ``ceil(numel / 8)`` bytes.

    Entry ``i`` of the flattened mask is bit ``i % 8`` of byte ``i // 8``. Inverse: :func:`unpack_bool_mask`.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bool_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    """Unpack the bytes of :func:`pack_bool_mask` into a boolean mask of ``shape``."""
    shape = tuple(shape) if not isinstance(shape, int) else (shape,)
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(f"packed mask must be a 1-D uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    if packed.numel() != packed_numel(numel):
        raise ValueError(
            f"packed mask has {packed.numel()} bytes but shape {shape} needs {packed_numel(numel)}")
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) & weights) != 0
    return bits.reshape(-1)[:numel].reshape(shape)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask (shape of ``scores``) with exactly ``k`` True entries: the ``k`` highest scores.

    Ties are broken by position (earlier entries first), so the result is deterministic. ``-inf`` scores are
    never selected unless ``k`` exceeds the number of finite ones.
    """
    numel = scores.numel()
    if not 0 <= k <= numel:
        raise ValueError(f"k must be in [0, {numel}], got {k}")
    order = torch.argsort(scores.reshape(-1).float(), descending=True, stable=True)
    mask = torch.zeros(numel, dtype=torch.bool, device=scores.device)
    mask[order[:k]] = True
    return mask.reshape(scores.shape)


def topk_masks(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Jointly select the ``k`` highest entries over several score tensors (a global top-k); one mask each."""
    sizes = [s.numel() for s in scores]
    joint = topk_mask(torch.cat([s.reshape(-1).float() for s in scores]), k)
    return [m.reshape(s.shape) for m, s in zip(torch.split(joint, sizes), scores)]


def count_to_keep(ratio: float, numel: int) -> int:
    """``round(ratio * numel)``: the number of entries a keep ratio means (exact-count masks use this)."""
    check_number("ratio", ratio, ge=0, le=1)
    return int(round(ratio * numel))
