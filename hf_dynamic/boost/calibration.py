"""Budgeted batch classification for boosted early exits (docs/boost.md, "## Calibration"; the MSDNet protocol:
Huang et al., ICLR 2018, §4 "budgeted batch classification"; used by BoostNet, Yu et al., AAAI 2023).

Given a target average cost B (a fraction of the full model; cost of exiting at backbone layer l of L is l/L), pick
exit fractions ``q_k ∝ p^k`` (k = 1..N), solve p so that the expected cost ``Σ_k q_k·cost_k`` equals B, then walk the
exits in order on held-out data: at exit k, among the samples not yet exited, the ``round(n·q_k)`` most confident
leave; θ_k is set between the last sample that leaves and the next one. The last exit takes every sample left.

- :func:`calibrate_thresholds` does this and stores the thresholds in ``model.config.exit_thresholds``.
- :func:`accuracy_cost_curve` sweeps budgets and measures, in dynamic mode, the real cost (backbone layers executed
  per sample over the total) and the accuracy.
- :func:`plot_accuracy_cost_curve` draws curves into a PNG.
"""

import math
from dataclasses import dataclass

import torch
from scipy.optimize import brentq
from transformers.utils import logging

from ..core.validation import check_number
from .criteria import ExitRule, get_criterion

logger = logging.get_logger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


@dataclass
class Calibration:
    """Result of :func:`calibrate_thresholds`.

    thresholds: one per exit, in the criterion's units (stored in the config); p: the solved ratio of q_k ∝ p^k
    (``inf`` when the budget is the full model, ``0`` when it is the first exit's cost); exit_fractions: the
    q_k; expected_cost: ``Σ_k q_k·cost_k``; calibration_cost: the cost the thresholds give on the calibration data.
    """

    thresholds: list
    p: float
    exit_fractions: list
    expected_cost: float
    calibration_cost: float


def exit_costs(config) -> list:
    """Cost of each exit as a fraction of the full model: ``exit_layer / num_backbone_layers``."""
    total = config.num_backbone_layers
    return [layer / total for layer in config.exit_layers]


def exit_fractions(log_p: float, num_exits: int) -> torch.Tensor:
    """q_k ∝ p^k for k = 1..N, computed in log space (MSDNet budgeted batch classification)."""
    k = torch.arange(1, num_exits + 1, dtype=torch.float64)
    return torch.softmax(k * log_p, dim=0)


def solve_exit_fractions(budget: float, costs) -> tuple:
    """Solve p of q_k ∝ p^k so that ``Σ_k q_k·cost_k == budget``; return ``(p, q)``.

    The expected cost grows monotonically with p from cost_1 (p → 0) to cost_N (p → ∞), so Brent's method on
    log p ∈ [-60, 60] finds it (``scipy.optimize.brentq``; the expected cost matches the budget within 1e-12, as
    the former 200-step bisection did). Raises ``ValueError`` if the budget is outside (0, 1] or below the first
    exit's cost.
    """
    check_number("budget", budget, gt=0, le=1)
    costs64 = torch.tensor(costs, dtype=torch.float64)
    n = len(costs)
    if budget < costs[0] - 1e-12:
        raise ValueError(
            f"budget {budget} is below the cost of the first exit ({costs[0]:.4f}): no exit schedule reaches it"
        )
    if n == 1 or budget >= costs[-1] - 1e-12:
        q = torch.zeros(n, dtype=torch.float64)
        q[-1] = 1.0
        return math.inf, q
    if budget <= costs[0] + 1e-12:
        q = torch.zeros(n, dtype=torch.float64)
        q[0] = 1.0
        return 0.0, q
    log_p = brentq(lambda x: float((exit_fractions(x, n) * costs64).sum()) - budget, -60.0, 60.0,
                   xtol=1e-14, rtol=1e-15, maxiter=500)
    return math.exp(log_p), exit_fractions(log_p, n)


def thresholds_for_fractions(scores: torch.Tensor, fractions: torch.Tensor) -> tuple:
    """Per-exit score thresholds so that fraction q_k of the samples exits at exit k (MSDNet's procedure).

    ``scores`` is ``(n, N)`` (higher = more certain). Walking the exits in order, among the samples still present
    the ``C_k - C_{k-1}`` highest-scoring leave at exit k, with ``C_k = round(n·Σ_{j≤k} q_j)``; the threshold sits
    halfway between the last leaver and the best stayer (robust to rounding noise). The last exit takes all.
    Returns ``(score_thresholds, exit_index_per_sample)``.
    """
    n, num_exits = scores.shape
    remaining = torch.ones(n, dtype=torch.bool)
    exit_index = torch.full((n,), num_exits - 1, dtype=torch.long)
    cumulative = torch.round(torch.cumsum(fractions, 0) * n).long().tolist()
    thresholds, done = [], 0
    for k in range(num_exits - 1):
        count = max(0, min(cumulative[k], n) - done)
        candidates = scores[remaining, k]
        order = torch.sort(candidates, descending=True).values
        if count == 0:
            threshold = math.inf
        elif count >= order.numel():
            threshold = -math.inf
        else:
            threshold = float((order[count - 1] + order[count]) / 2)
            if threshold == float(order[count]):  # ties: exit no more than requested
                threshold = math.nextafter(float(order[count]), math.inf)
        leaving = remaining & (scores[:, k] >= threshold)
        exit_index[leaving] = k
        remaining &= ~leaving
        done += int(leaving.sum())
        thresholds.append(threshold)
    thresholds.append(-math.inf)
    return thresholds, exit_index


def simulate_exits(config, all_exit_logits, thresholds=None) -> torch.Tensor:
    """Exit index (0-based) each sample would take in dynamic mode, from its anytime logits ``(n, N, C)``.

    The model's dynamic mode and this function share one exit rule (:class:`~hf_dynamic.boost.criteria.ExitRule`):
    the first exit whose criterion fires, the last exit otherwise. For budget sweeps without re-running the model;
    the model's real dynamic mode gives the same exits up to floating-point ties (tested).
    """
    settings = config.exit_settings()
    if thresholds is not None:
        settings = settings.with_thresholds(thresholds)
    thresholds = settings.thresholds
    if get_criterion(settings.criterion).calibratable and (thresholds is None or len(thresholds) != settings.num_exits):
        raise ValueError(f"thresholds must give one value per exit ({settings.num_exits}), got {thresholds!r}")
    n, num_exits = all_exit_logits.shape[:2]
    rule = ExitRule(settings, n, all_exit_logits.device)
    exit_index = torch.full((n,), num_exits - 1, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    for k in range(num_exits - 1):
        fires = undecided & rule.fires(all_exit_logits[:, k], k)
        exit_index[fires] = k
        undecided &= ~fires
    return exit_index


def _model_inputs(batch, device):
    return {key: value.to(device) for key, value in batch.items() if key in _MODEL_INPUTS and value is not None}


@torch.no_grad()
def collect_exit_logits(model, dataloader) -> tuple:
    """Anytime pass over ``dataloader``: ``(all_exit_logits (n, N, C), labels (n,) or None)`` on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, labels = [], []
    try:
        for batch in dataloader:
            out = model(**_model_inputs(batch, device), output_all_exits=True)
            logits.append(out.all_exit_logits.float().cpu())
            if batch.get("labels") is not None:
                labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("dataloader yielded no batches")
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def _check_calibratable(model):
    config = model.config
    if not get_criterion(config.exit_criterion).calibratable:
        raise ValueError(
            f"exit_criterion={config.exit_criterion!r}: budget calibration sets per-exit thresholds, which only the "
            "'confidence' and 'entropy' criteria have"
        )
    if config.is_regression:
        raise ValueError("budget calibration needs class probabilities; the model is a regression (num_labels=1)")


def calibrate_from_logits(config, all_exit_logits, budget) -> Calibration:
    """The calibration of :func:`calibrate_thresholds` from precomputed anytime logits ``(n, N, C)``; the config is
    not modified."""
    criterion = get_criterion(config.exit_criterion)
    costs = exit_costs(config)
    p, q = solve_exit_fractions(budget, costs)
    scores = torch.stack([criterion.score(all_exit_logits[:, k]) for k in range(config.num_exits)], dim=1)
    score_thresholds, exit_index = thresholds_for_fractions(scores, q)
    # the last exit accepts every sample: store a finite value that always fires (JSON has no infinities)
    thresholds = [criterion.finite_threshold(criterion.score_to_threshold(s), config.num_labels)
                  for s in score_thresholds]
    calibration_cost = float(torch.tensor(costs, dtype=torch.float64)[exit_index].mean())
    return Calibration(
        thresholds=thresholds,
        p=p,
        exit_fractions=q.tolist(),
        expected_cost=float((q * torch.tensor(costs, dtype=torch.float64)).sum()),
        calibration_cost=calibration_cost,
    )


def calibrate_thresholds(model, dataloader, budget: float) -> Calibration:
    """Budgeted batch classification (docs/boost.md, "## Calibration"; from MSDNet): set per-exit thresholds for an average cost.

    Args:
        model: a [`BoostedEarlyExitForSequenceClassification`] (criterion ``confidence`` or ``entropy``).
        dataloader: any iterable of batches (dicts of tensors, as a DataLoader yields) of held-out data.
        budget: target average cost as a fraction of the full model, in (0, 1]; cost of a sample = backbone layers
            executed / total layers.

    Exit fractions q_k ∝ p^k with p solved so that ``Σ q_k·cost_k = budget``; thresholds chosen on the data so
    that fraction q_k exits at exit k. The thresholds are stored in ``model.config.exit_thresholds`` (saved by
    ``save_pretrained``) and returned in a [`Calibration`].
    """
    _check_calibratable(model)
    solve_exit_fractions(budget, exit_costs(model.config))  # validate the budget before any work
    all_exit_logits, _ = collect_exit_logits(model, dataloader)
    calibration = calibrate_from_logits(model.config, all_exit_logits, budget)
    model.config.exit_thresholds = calibration.thresholds
    model.config.check_exit_setup()
    logger.info(
        f"calibrated thresholds for budget {budget}: {calibration.thresholds} "
        f"(expected cost {calibration.expected_cost:.4f}, on calibration data {calibration.calibration_cost:.4f})"
    )
    return calibration


@torch.no_grad()
def measure_dynamic(model, dataloader, metric_fn=None, return_outputs=False) -> dict:
    """Run the model in dynamic mode over ``dataloader``; return measured cost, metric and exit histogram.

    cost = mean over samples of (backbone layers executed / total layers), read from each sample's ``exit_layer``
    (the number of layers that really ran for it). ``metric_fn(predictions, references) -> float`` replaces
    accuracy when given. ``return_outputs=True`` adds the tensors ``predictions``, ``labels`` and ``exit_layer``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    predictions, labels, layers = [], [], []
    try:
        for batch in dataloader:
            out = model(**_model_inputs(batch, device))
            if out.exit_layer is None:
                raise ValueError("the model is not in dynamic mode (set exit_thresholds or exit_patience)")
            predictions.append(out.logits.argmax(-1).cpu())
            layers.append(out.exit_layer.cpu())
            labels.append(batch["labels"].cpu())
    finally:
        model.train(was_training)
    predictions, labels, layers = torch.cat(predictions), torch.cat(labels), torch.cat(layers)
    total = model.config.num_backbone_layers
    if metric_fn is None:
        metric = float((predictions == labels).float().mean())
    else:
        metric = float(metric_fn(predictions.numpy(), labels.numpy()))
    histogram = [int((layers == layer).sum()) for layer in model.config.exit_layers]
    result = {"cost": float(layers.double().mean() / total), "metric": metric, "exit_counts": histogram}
    if return_outputs:
        result.update(predictions=predictions, labels=labels, exit_layer=layers)
    return result


def accuracy_cost_curve(model, calibration_dataloader, eval_dataloader=None, budgets=None, metric_fn=None) -> list:
    """Trace accuracy (or ``metric_fn``) vs *measured* cost over a sweep of budgets (docs/boost.md, "## Calibration").

    For each budget: thresholds calibrated on ``calibration_dataloader`` (one anytime pass, reused), then a real
    dynamic-mode pass over ``eval_dataloader`` (default: the calibration data) measures cost = backbone layers
    executed / total and the metric. Default budgets: 11 points from the first exit's cost to 1. The model's own
    ``exit_thresholds`` are restored afterwards. Returns a list of dicts (budget, thresholds, p, expected_cost,
    calibration_cost, cost, metric, exit_counts), in budget order.
    """
    _check_calibratable(model)
    costs = exit_costs(model.config)
    if budgets is None:
        budgets = torch.linspace(costs[0], 1.0, 11).tolist()
    for budget in budgets:
        solve_exit_fractions(budget, costs)  # validate all budgets before any work
    eval_dataloader = calibration_dataloader if eval_dataloader is None else eval_dataloader
    all_exit_logits, _ = collect_exit_logits(model, calibration_dataloader)
    saved = model.config.exit_thresholds
    curve = []
    try:
        for budget in sorted(budgets):
            calibration = calibrate_from_logits(model.config, all_exit_logits, budget)
            model.config.exit_thresholds = calibration.thresholds
            measured = measure_dynamic(model, eval_dataloader, metric_fn)
            curve.append(
                {
                    "budget": float(budget),
                    "thresholds": calibration.thresholds,
                    "p": calibration.p,
                    "expected_cost": calibration.expected_cost,
                    "calibration_cost": calibration.calibration_cost,
                    **measured,
                }
            )
    finally:
        model.config.exit_thresholds = saved
    return curve


def plot_accuracy_cost_curve(curves, path, metric_name="accuracy", anytime=None, title=None):
    """Plot measured metric vs measured cost for one or several curves into a PNG at ``path``.

    ``curves``: a curve from :func:`accuracy_cost_curve` or ``{label: curve}``; ``anytime``: optional
    ``{label: (costs, metrics)}`` of per-exit (anytime) results drawn as dashed lines. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(curves, list):
        curves = {"dynamic": curves}
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, curve in curves.items():
        ax.plot([c["cost"] for c in curve], [c["metric"] for c in curve], marker="o", label=label)
    for label, (costs, metrics) in (anytime or {}).items():
        ax.plot(costs, metrics, linestyle="--", marker="x", label=label)
    ax.set_xlabel("measured cost (backbone layers executed / total)")
    ax.set_ylabel(metric_name)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


__all__ = [
    "Calibration",
    "accuracy_cost_curve",
    "calibrate_thresholds",
    "calibrate_from_logits",
    "collect_exit_logits",
    "exit_costs",
    "exit_fractions",
    "measure_dynamic",
    "plot_accuracy_cost_curve",
    "simulate_exits",
    "solve_exit_fractions",
    "thresholds_for_fractions",
]
