"""AutoSlim-style greedy search of per-layer widths under a FLOP or latency budget (``docs/slim.md``,
"## AutoSlim search").

A width of a slimmable model is, per layer ``i``, the kept ``(head groups g_i, FFN channels c_i)``
(:func:`hf_dynamic.slim.modeling.resolve_widths`). A **cost** is a callable ``cost(model, counts) -> float``:

- :class:`FlopCost`: the analytic matmul FLOPs of one forward pass (``FlopCounterMode``'s convention) from
  :func:`hf_dynamic.core.resources.bert_forward_flops` / :func:`~hf_dynamic.core.resources.llama_forward_flops`
  (:func:`width_flops`);
- :class:`LatencyCost`: the measured median forward time on example inputs (:func:`measure_latency`).

:func:`autoslim_search` (AutoSlim, Yu & Huang 2019) starts at full width and, while ``cost > budget · cost(full)``,
evaluates every one-step shrink (one layer's attention by one head group, or its FFN by ``mlp_step`` of its
channels) with the user's ``evaluate(model) -> float`` on a held-out split and keeps the best one (ties: the larger
cost saving, then the lower layer, then attention before FFN). :func:`uniform_width_for_budget` gives the uniform
multiplier to compare against at the same budget.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from time import perf_counter

import torch
from torch import nn
from transformers.utils import logging

from ..core.resources import bert_forward_flops, llama_forward_flops
from ..core.validation import check_bool, check_number
from .modeling import _require_slimmable, get_width, resolve_widths, set_width, slim_layers, width

logger = logging.get_logger(__name__)

__all__ = [
    "FlopCost",
    "LatencyCost",
    "SearchStep",
    "SlimSearchResult",
    "autoslim_search",
    "measure_latency",
    "uniform_width_for_budget",
    "width_flops",
    "widths_from_counts",
]

Counts = list[tuple[int, int]]


def _full_counts(model: nn.Module) -> Counts:
    return [(layer.num_groups, layer.intermediate_size) for layer in slim_layers(model)]


def widths_from_counts(model: nn.Module, counts) -> dict[int, dict[str, float]]:
    """``{i: {"attention": g_i / G_i, "mlp": c_i / I_i}}``: per-layer multipliers that :func:`set_width` resolves
    back to exactly ``counts`` (``round_half_up((k / n) · n) = k``: the float error of ``k / n · n`` is far below
    the 0.5 of the rounding). ``ValueError`` for a count outside ``[1, n]`` or the wrong number of layers."""
    full = _full_counts(model)
    if len(counts) != len(full):
        raise ValueError(f"counts has {len(counts)} layers, the model has {len(full)}")
    widths = {}
    for i, ((g, c), (n_g, n_c)) in enumerate(zip(counts, full)):
        check_number(f"counts[{i}] head groups", g, integer=True, ge=1, le=n_g)
        check_number(f"counts[{i}] FFN channels", c, integer=True, ge=1, le=n_c)
        widths[i] = {"attention": g / n_g, "mlp": c / n_c}
    return widths


# --- costs --------------------------------------------------------------------------------------------------------
def width_flops(model: nn.Module, counts=None, *, seq_len: int, batch_size: int = 1) -> float:
    """Analytic forward FLOPs of a slimmable ``model`` at ``counts`` (default: its active width) over
    ``batch_size × seq_len`` tokens, counted as ``FlopCounterMode`` does (2 per multiply-add, ``QKᵀ`` and ``AV``
    included, eager attention).

    BERT family: :func:`~hf_dynamic.core.resources.bert_forward_flops` with ``n_i = g_i`` heads and ``I_i = c_i``,
    plus the pooler when the model has one and an ``nn.Linear`` ``classifier`` on the pooled output. Llama family:
    :func:`~hf_dynamic.core.resources.llama_forward_flops` with ``n_kv,i = g_i``, ``n_q,i = g_i · n_q / n_kv`` and
    ``I_i = c_i``, plus the LM head (``get_output_embeddings()``) on every token. Other task heads are not
    counted: they do not depend on the width.
    """
    check_number("seq_len", seq_len, integer=True, ge=1)
    check_number("batch_size", batch_size, integer=True, ge=1)
    _require_slimmable(model)
    layers = slim_layers(model)
    counts = get_width(model) if counts is None else list(counts)
    groups = [g for g, _ in counts]
    channels = [c for _, c in counts]
    config = model.config
    if hasattr(getattr(model, "base_model", model), "layers"):  # Llama family
        head_dim = layers[0].head_in[1][2]  # k_proj rows per KV group
        rep = layers[0].head_in[0][2] // head_dim  # query heads per KV group
        head = model.get_output_embeddings()
        flops = llama_forward_flops(
            vocab_size=head.out_features if isinstance(head, nn.Linear) else 0, hidden_size=config.hidden_size,
            head_dim=head_dim, num_attention_heads=[g * rep for g in groups], num_key_value_heads=groups,
            intermediate_size=channels, num_layers=len(layers), seq_len=seq_len, batch_size=batch_size,
        )
    else:
        pooler = getattr(getattr(model, "base_model", model), "pooler", None) is not None
        classifier = getattr(model, "classifier", None)
        flops = bert_forward_flops(
            hidden_size=config.hidden_size, head_dim=layers[0].head_in[0][2], num_attention_heads=groups,
            intermediate_size=channels, num_layers=len(layers), seq_len=seq_len, batch_size=batch_size,
            pooler=pooler, num_labels=classifier.out_features if pooler and isinstance(classifier, nn.Linear) else 0,
        )
    return float(flops)


def _call(model, inputs):
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def measure_latency(model: nn.Module, inputs, widths=None, *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time (seconds) of ``model(**inputs)`` (or ``model(inputs)`` for a tensor) over ``repeats``
    timed runs after ``warmup`` untimed ones, under ``torch.inference_mode``, at ``widths`` (default: the active
    width; the previous width is restored after). On an accelerator each run is synchronized before the clock
    is read."""
    check_number("repeats", repeats, integer=True, ge=1)
    check_number("warmup", warmup, integer=True, ge=0)
    _require_slimmable(model)
    device = next(model.parameters()).device
    sync = torch.accelerator.synchronize if device.type != "cpu" else (lambda: None)
    times = []
    with width(model, widths if widths is not None else widths_from_counts(model, get_width(model))), \
            torch.inference_mode():
        for _ in range(warmup):
            _call(model, inputs)
        for _ in range(repeats):
            sync()
            start = perf_counter()
            _call(model, inputs)
            sync()
            times.append(perf_counter() - start)
    return statistics.median(times)


@dataclass
class FlopCost:
    """Cost = :func:`width_flops` over ``batch_size × seq_len`` tokens (deterministic; exact for eager attention)."""

    seq_len: int
    batch_size: int = 1

    def __post_init__(self):
        check_number("seq_len", self.seq_len, integer=True, ge=1)
        check_number("batch_size", self.batch_size, integer=True, ge=1)

    def __call__(self, model: nn.Module, counts) -> float:
        return width_flops(model, counts, seq_len=self.seq_len, batch_size=self.batch_size)


@dataclass
class LatencyCost:
    """Cost = :func:`measure_latency` on ``inputs`` (a dict of model inputs, or a tensor) at the counts: the median
    of ``repeats`` timed forwards. Measured, hence noisy: a search on it is only as steady as the machine."""

    inputs: object
    repeats: int = 5
    warmup: int = 1

    def __post_init__(self):
        check_number("repeats", self.repeats, integer=True, ge=1)
        check_number("warmup", self.warmup, integer=True, ge=0)

    def __call__(self, model: nn.Module, counts) -> float:
        return measure_latency(model, self.inputs, widths_from_counts(model, counts), repeats=self.repeats,
                               warmup=self.warmup)


# --- search -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchStep:
    """One step of the trajectory: the move (``layer``, ``part`` in ``"attention"`` / ``"mlp"``; ``None`` for the
    start at full width), the counts after it, their cost, cost fraction of full width, and metric."""

    layer: int | None
    part: str | None
    counts: tuple[tuple[int, int], ...]
    cost: float
    cost_fraction: float
    metric: float


@dataclass
class SlimSearchResult:
    """The searched width: ``widths`` (the dict :func:`set_width` takes, resolving to exactly ``counts``), its
    ``cost``, ``cost_fraction`` (of ``full_cost``), ``metric``, the ``trajectory`` from full width, the number
    of ``evaluate`` calls and the model's ``full_counts`` (per layer ``(head groups, FFN channels)``)."""

    widths: dict[int, dict[str, float]]
    counts: list[tuple[int, int]]
    cost: float
    cost_fraction: float
    metric: float
    full_cost: float
    trajectory: list[SearchStep] = field(repr=False)
    num_evaluations: int = 0
    full_counts: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def step_at(self, budget: float) -> SearchStep:
        """The first trajectory step with ``cost_fraction <= budget``: one search also answers every budget above
        its own (AutoSlim reads all its budgets off one trajectory), each a width :func:`set_width` accepts via
        ``widths_from_counts(model, step.counts)``."""
        check_number("budget", budget, gt=0, le=1)
        for step in self.trajectory:
            if step.cost_fraction <= budget:
                return step
        raise ValueError(f"budget={budget!r} is below this search's final cost fraction {self.cost_fraction:.4g}")


def _check_callable(name: str, value, signature: str) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be a callable {signature}, got {value!r} ({type(value).__name__})")


def _number(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    check_number(name, value)
    return float(value)


def _moves(counts: Counts, mlp_units: list[int], parts):
    """Every one-step shrink of ``counts`` in ``parts``: ``(layer, part, new counts)``, never below one unit."""
    for i, (g, c) in enumerate(counts):
        if g > 1 and "attention" in parts:
            yield i, "attention", counts[:i] + [(g - 1, c)] + counts[i + 1:]
        if c > 1 and "mlp" in parts:
            yield i, "mlp", counts[:i] + [(g, max(1, c - mlp_units[i]))] + counts[i + 1:]


def autoslim_search(model: nn.Module, evaluate: Callable[[nn.Module], float], budget: float, cost: Callable,
                    *, mlp_step: float = 1 / 16, parts=("attention", "mlp"), progress: bool = True,
                    ) -> SlimSearchResult:
    """Greedy per-layer width search (AutoSlim, Yu & Huang 2019; ``docs/slim.md``, "## AutoSlim search").

    From full width, while ``cost(model, counts) > budget · cost(model, full)``: for every layer ``i``, try
    ``g_i − 1`` head groups and ``c_i − max(1, round_half_up(mlp_step · I_i))`` FFN channels (never below 1), run
    ``evaluate(model)`` (higher is better; on a held-out split, not the test set) with that width applied through
    :func:`hf_dynamic.slim.width`, and keep the best move; ties go to the larger cost saving, then the lower layer
    index, then attention before FFN. Each step costs one ``evaluate`` per candidate (at most ``2 · L``), so
    ``evaluate`` should run on a small held-out set and ``mlp_step`` be a channel *group*, as in AutoSlim; one pass
    answers every larger budget too (:meth:`SlimSearchResult.step_at`).

    Args:
        model: a slimmable model (:func:`make_slimmable`); run in eval mode during the search; its width and
            training mode are restored after.
        evaluate: ``evaluate(model) -> float`` (a finite number, or a one-element tensor).
        budget: the target cost as a fraction of the full-width cost, in ``(0, 1]``.
        cost: ``cost(model, counts) -> float``, e.g. :class:`FlopCost` or :class:`LatencyCost`.
        mlp_step: the FFN step as a fraction of each layer's intermediate size, in ``(0, 1]``.
        parts: the sub-blocks the search may shrink, a non-empty subset of ``("attention", "mlp")``; ``("mlp",)``
            keeps every head (an FFN-only search).
        progress: show a tqdm bar (``transformers.utils.logging``'s, so ``disable_progress_bar()`` silences it).
    """
    _check_callable("evaluate", evaluate, "evaluate(model) -> float")
    check_number("budget", budget, gt=0, le=1)
    _check_callable("cost", cost, "cost(model, counts) -> float")
    check_number("mlp_step", mlp_step, gt=0, le=1)
    if not isinstance(parts, (tuple, list)) or not parts or not set(parts) <= {"attention", "mlp"}:
        raise ValueError(f"parts must be a non-empty tuple of 'attention' / 'mlp', got {parts!r}")
    check_bool("progress", progress)
    _require_slimmable(model)
    full = _full_counts(model)
    mlp_units = [max(1, math.floor(mlp_step * n + 0.5)) for _, n in full]
    previous, was_training = get_width(model), model.training
    model.eval()
    evaluations = 0

    def cost_of(counts):
        return _number("cost(model, counts)", cost(model, counts))

    def metric_of(counts):
        nonlocal evaluations
        evaluations += 1
        with width(model, widths_from_counts(model, counts)):
            return _number("evaluate(model)", evaluate(model))

    try:
        full_cost = cost_of(full)
        if full_cost <= 0:
            raise ValueError(f"cost(model, counts) at full width must be > 0, got {full_cost!r}")
        target = budget * full_cost
        floor = [(1 if "attention" in parts else g, 1 if "mlp" in parts else c) for g, c in full]
        floor_fraction = cost_of(floor) / full_cost
        if floor_fraction > budget:
            raise ValueError(f"budget={budget!r} is below the smallest reachable cost fraction {floor_fraction:.4g} "
                             f"(one unit of {' and '.join(parts)} in every layer)")
        counts, current = list(full), full_cost
        trajectory = [SearchStep(None, None, tuple(counts), current, 1.0, metric_of(counts))]
        logger.info(f"AutoSlim search: full cost {full_cost:.4g}, target {target:.4g} (budget {budget}), "
                    f"metric at full width {trajectory[0].metric:.4g}")
        with logging.tqdm(desc="AutoSlim search", unit="step", disable=not progress) as bar:
            while current > target:
                scored = [(metric_of(new), i, part, new) for i, part, new in _moves(counts, mlp_units, parts)]
                if not scored:  # only a cost that is not a function of the counts (noise) gets here
                    raise ValueError(f"no move is left (every searched sub-block is at one unit) and cost(model, "
                                     f"counts) = {current!r} is still above budget · full cost = {target!r}: the "
                                     "cost is not reproducible")
                best = max(m for m, *_ in scored)
                tied = [(cost_of(new), i, part, new) for m, i, part, new in scored if m == best]
                # ties: the lowest cost (largest saving), then the lowest layer, then "attention" < "mlp"
                current, i, part, counts = min(tied, key=lambda t: t[:3])
                trajectory.append(SearchStep(i, part, tuple(counts), current, current / full_cost, best))
                bar.update(1)
                bar.set_postfix(cost=f"{current / full_cost:.3f}", metric=f"{best:.4g}")
    finally:
        set_width(model, widths_from_counts(model, previous))
        model.train(was_training)
    last = trajectory[-1]
    logger.info(f"AutoSlim search: {len(trajectory) - 1} steps, {evaluations} evaluations, cost fraction "
                f"{last.cost_fraction:.4g}, metric {last.metric:.4g}")
    return SlimSearchResult(widths=widths_from_counts(model, counts), counts=list(counts), cost=last.cost,
                            cost_fraction=last.cost_fraction, metric=last.metric, full_cost=full_cost,
                            trajectory=trajectory, num_evaluations=evaluations, full_counts=full)


def uniform_width_for_budget(model: nn.Module, budget: float, cost: Callable) -> float:
    """The largest uniform multiplier ``w`` with ``cost(resolve(w)) <= budget · cost(full)`` (the uniform baseline
    of a search at the same budget; ``docs/slim.md``).

    The counts ``round_half_up(w · n)`` change only at ``w = (k − ½) / n``; between two such breakpoints every
    ``w`` gives the same width. The breakpoints are enumerated exactly (fractions), the cost is assumed
    non-decreasing in ``w`` (true for FLOPs) and bisected over the steps; the returned ``w`` is the shortest
    decimal inside the chosen step (so ``set_width(model, w)`` gives exactly that step's counts).
    """
    check_number("budget", budget, gt=0, le=1)
    _check_callable("cost", cost, "cost(model, counts) -> float")
    _require_slimmable(model)
    sizes = {n for pair in _full_counts(model) for n in pair}
    lowest = Fraction(1, 2 * min(sizes))  # below it some layer keeps 0 units
    edges = sorted({Fraction(2 * k - 1, 2 * n) for n in sizes for k in range(1, n + 1)} | {Fraction(1)})
    edges = [e for e in edges if e >= lowest]
    steps = [(lo, hi) for lo, hi in zip(edges, edges[1:])] + [(edges[-1], Fraction(1))]  # [lo, hi); last [lo, 1]
    reps = [float((lo + hi) / 2) for lo, hi in steps[:-1]] + [1.0]
    full_cost = _number("cost(model, counts)", cost(model, _full_counts(model)))

    def fits(w):
        return _number("cost(model, counts)", cost(model, resolve_widths(model, w))) <= budget * full_cost

    if not fits(reps[0]):
        raise ValueError(f"budget={budget!r} is below the cost of the smallest uniform width {reps[0]:.4g}")
    lo, hi = 0, len(reps) - 1  # reps[lo] fits; find the last that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(reps[mid]) else (lo, mid - 1)
    w, counts = reps[lo], resolve_widths(model, reps[lo])
    for digits in range(1, 8):
        short = round(w, digits)
        if 0 < short <= 1 and resolve_widths(model, short) == counts:
            return short
    return w
