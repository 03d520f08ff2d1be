"""The DMS resource target: its checks, its ramp and the exact-target snap of the keep ratios (``docs/dms.md``,
"## Resource loss" and "## Exact-target export").

The target has one holder, the :class:`~hf_dynamic.dms.pruner.DMSPruner`: ``pruner.target`` is the final fraction
the search aims at and the export meets, ``pruner.current_target`` the value the resource loss uses now.
:class:`~hf_dynamic.dms.callback.DMSCallback` ramps ``current_target`` towards ``pruner.target`` with
:func:`ramp_target` (it keeps no target of its own: a different one is a ``ValueError``), and :func:`meet_target`
reads ``pruner.target``.

- :func:`check_target`: a fraction of the full model's resource, ``(0, 1)`` (``(0, 1]`` for a ramped value);
- :func:`ramp_target`: ``t(s) = 1 − (1 − T) · min(1, s / max(1, ρ·S))`` for step ``s`` of ``S``;
- :func:`round_counts`: kept counts rounded to a multiple of ``channel_multiple``;
- :func:`meet_target`: snap every keep ratio to a whole count so that the hard masks meet the target from below.
"""

from __future__ import annotations

import math

import torch
from transformers.utils import logging

from ..core.validation import check_number

logger = logging.get_logger(__name__)

__all__ = ["check_target", "meet_target", "ramp_target", "round_counts"]


def check_target(name: str, value, allow_full: bool = False) -> float:
    """``value`` as a float after checking it is a fraction in ``(0, 1)`` (``(0, 1]`` with ``allow_full``: a ramped
    target starts at the full model); a ``ValueError`` naming ``name`` otherwise (NaN, a string, a bool...)."""
    check_number(name, value, gt=0, **({"le": 1} if allow_full else {"lt": 1}))
    return float(value)


def ramp_target(final: float, step: int, max_steps: int, ramp_fraction: float) -> float:
    """Linear ramp from 1.0 at step 0 to ``final`` at ``ramp_fraction · max_steps``, constant afterwards:
    ``t(s) = 1 − (1 − T) · min(1, s / max(1, ρ·S))`` (``docs/dms.md``, "## Resource loss")."""
    ramp = max(1.0, ramp_fraction * max(int(max_steps), 1))
    return 1.0 - (1.0 - final) * min(1.0, step / ramp)


def round_counts(counts: torch.Tensor, multiple: int, maximum: int) -> torch.Tensor:
    """Nearest multiple of ``multiple`` in ``[multiple, maximum]`` (``maximum`` itself if no multiple fits)."""
    if multiple <= 1:
        return counts.long()
    top = (maximum // multiple) * multiple
    if top == 0:
        return torch.full_like(counts.long(), maximum)
    rounded = torch.round(counts.double() / multiple).long() * multiple
    return rounded.clamp(multiple, top)


@torch.no_grad()
def meet_target(pruner) -> dict:
    """Snap every keep ratio of ``pruner`` to a whole count so that its hard masks (and so the export) meet
    ``pruner.target`` from below, as closely as the finest searched kind allows (``docs/dms.md``, "## Exact-target
    export"). :meth:`hf_dynamic.dms.pruner.DMSPruner.meet_target` is the public entry point.

    Why: the paper's hard mask keeps element ``i`` when ``c'_i ≥ 1 − e``, i.e. ``floor(N·e) + 1`` elements per
    row, on average half an element more than the ``N·e`` the resource loss drove to the target. For coarse
    kinds that overshoots (3 KV groups at ``e = 0.76`` keep 3, not 2.28: SmolLM2-135M at target 0.8 exported
    at 0.818). Steps:

    1. every kind keeps ``round(N·e)`` elements per row (halves rounded up; at least one);
    2. the finest searched kind (MLP channels, else hidden channels) gives up, then takes back, one rounding
       step (``channel_multiple`` channels; for hidden channels in uniform mode the multiple of the kept query
       heads) at a time, in the row whose next element the search wanted least (lowest soft-mask value; every
       row at once when its keep ratio is shared), until ``R_hard ≤ target`` and one more step would exceed
       it.

    The keep ratios are set with :meth:`~hf_dynamic.core.topk.DifferentiableTopK.set_keep_count`, so the
    hard-masked model and every export agree. Returns ``{"target", "before", "after", "counts"}``: the hard
    resource ratios before / after and the kept counts per kind (lists over rows).
    """
    t = pruner.target
    before = float(pruner.resource_ratio(hard=True))
    fine = "mlp" if "mlp" in pruner.topk else "hidden" if "hidden" in pruner.topk else None
    wanted = pruner.topk[fine].soft_mask().sort(dim=-1, descending=True).values if fine else None
    for kind in ("layers", "heads", "mlp", "hidden"):  # heads before hidden: the hidden multiple depends on them
        if kind not in pruner.topk:
            continue
        op = pruner.topk[kind]
        # N·e rounded half up: a snapped keep ratio (e = (count − ½)/N) gives back its count, so a second call
        # starts where the first ended
        counts = torch.floor(op.clamped_keep_ratio() * op.num_elements + 0.5).clamp(1, op.num_elements)
        if kind == "mlp":
            counts = round_counts(counts, pruner.channel_multiple, pruner.intermediate_size)
        op.set_keep_count(counts)
        if kind == "hidden":  # what the hard mask's rounding makes of it, so that the threshold alone keeps it
            op.set_keep_count(int(pruner.masks("hard")["hidden"].sum()))
    if fine is not None:
        _fit_fine_kind(pruner, fine, t, wanted)
    after = float(pruner.resource_ratio(hard=True))
    if after > t:
        logger.warning(
            "meet_target(%.4f): the hard resource stays at %.4f with %s at their fewest elements; search longer or "
            "prune more kinds", t, after, fine or "every kind rounded",
        )
    logger.info("meet_target(%.4f): hard resource %.4f -> %.4f", t, before, after)
    # every count is now what the threshold alone keeps (multiples already rounded), so kept_counts is exact
    counts = {kind: op.kept_counts().tolist() for kind, op in pruner.topk.items()}
    return {"target": t, "before": before, "after": after, "counts": counts}


def _fit_fine_kind(pruner, kind: str, target: float, wanted: torch.Tensor) -> None:
    """Step 2 of :func:`meet_target`: move ``kind``'s counts by one rounding step at a time (rows chosen by
    ``wanted``, the pre-snap soft mask sorted in descending order per row)."""
    op = pruner.topk[kind]
    n = op.num_elements
    hard = pruner.masks("hard")
    if kind == "mlp":
        step = pruner.channel_multiple
        present = (hard["mlp_block"] > 0.5 if "mlp_block" in hard
                   else torch.ones(pruner.num_layers, dtype=torch.bool))
    else:
        heads = int(hard["heads_q"][0].sum()) if pruner.uniform and "heads_q" in hard else 1
        step = math.lcm(pruner.channel_multiple, heads)
        present = torch.ones((), dtype=torch.bool)
    step = min(step, n)
    top = (n // step) * step
    counts = op.kept_counts().reshape(-1)
    wanted = wanted.reshape(-1, n)
    present = present.reshape(-1).to(counts.device)
    shared = op.keep_ratio.dim() == 0

    def ratio(new_counts):
        op.set_keep_count(new_counts[0] if shared else new_counts.reshape(op.keep_ratio.shape))
        return float(pruner.resource_ratio(hard=True))

    def pick(movable, values):
        if shared:
            return 0 if bool(movable.all()) else None
        rows = torch.nonzero(movable & present).flatten()
        return None if rows.numel() == 0 else int(rows[torch.argmin(values[rows])])

    def move(row, delta):
        new = counts.clone()
        if shared:
            new += delta
        else:
            new[row] += delta
        return new

    while ratio(counts) > target:  # give up the least wanted kept elements
        lowest = wanted.gather(1, (counts - 1).clamp(0, n - 1).unsqueeze(1)).squeeze(1)
        row = pick(counts - step >= step, lowest)
        if row is None:
            break
        counts = move(row, -step)
    while True:  # take back the most wanted dropped ones while the target holds
        nxt = wanted.gather(1, counts.clamp(0, n - 1).unsqueeze(1)).squeeze(1)
        row = pick(counts + step <= top, -nxt)
        if row is None:
            break
        new = move(row, step)
        if ratio(new) > target:
            break
        counts = new
    ratio(counts)
