"""Exit criteria and the one exit rule of boosted early exits (docs/boost.md, "## Exit rule and criteria").

Each criterion is one small class holding everything about it: its per-exit score, the conversion between its
stored thresholds and that score, the finite thresholds standing for "never" / "always" (JSON has no infinities),
its checks (regression, ...) and its per-batch state. :data:`EXIT_CRITERIA` is the registry, keyed by criterion name.

The criteria and the rule read an :class:`ExitSettings` (criterion name, number of exits, thresholds, patience,
tolerance, regression or not), never a model config: a model maps its own fields onto one (the boosted model's
``BoostedEarlyExitConfig.exit_settings()``), so the rule serves any model that has exits.

:class:`ExitRule` is the only place that decides which samples leave at an exit: the model's dynamic mode walks it
on the shrinking batch, :func:`hf_dynamic.boost.calibration.simulate_exits` on precomputed anytime logits.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..core.validation import check_choice, check_number


@dataclass(frozen=True)
class ExitSettings:
    """What the exit rule needs to know (docs/boost.md, "## Exit rule and criteria").

    criterion: a name of :data:`EXIT_CRITERIA`; num_exits: N; thresholds: one per exit (threshold criteria) or
    ``None`` (no early exit); patience: consecutive agreeing exits (patience criterion) or ``None``; tolerance: how
    close two regression predictions must be to agree; regression: the predictions are one real value, not logits.
    """

    criterion: str
    num_exits: int
    thresholds: tuple | None = None
    patience: int | None = None
    tolerance: float = 0.1
    regression: bool = False

    def __post_init__(self):
        check_choice("criterion", self.criterion, tuple(EXIT_CRITERIA))
        check_number("num_exits", self.num_exits, integer=True, ge=1)
        if self.thresholds is not None and len(self.thresholds) != self.num_exits:
            raise ValueError(f"thresholds has {len(self.thresholds)} values but there are {self.num_exits} exits")

    def with_thresholds(self, thresholds) -> "ExitSettings":
        """A copy with other thresholds (calibration sweeps)."""
        return dataclasses.replace(self, thresholds=None if thresholds is None else tuple(thresholds))


class ExitCriterion:
    """Base class of exit criteria; subclasses set ``name`` and implement :meth:`fires`."""

    name: str = ""
    calibratable: bool = False  # has per-exit thresholds that budget calibration can set

    def enabled(self, settings: ExitSettings) -> bool:
        """Whether the settings make inference exit early with this criterion."""
        raise NotImplementedError

    def check(self, settings: ExitSettings) -> None:
        """Raise ``ValueError`` for settings this criterion cannot serve."""

    def init_state(self, batch_size: int, device) -> dict:
        """Per-sample state carried from exit to exit (compacted with the batch)."""
        return {}

    def fires(self, prediction: torch.Tensor, k: int, state: dict, settings: ExitSettings) -> torch.Tensor:
        """Boolean mask of the samples whose criterion fires at exit k (0-based), given exit k's prediction F_k."""
        raise NotImplementedError


class ThresholdCriterion(ExitCriterion):
    """A criterion with a per-exit score that grows with certainty: exit k fires when ``score ≥ score(θ_k)``."""

    calibratable = True

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def threshold_to_score(self, threshold: float) -> float:
        """Map a stored threshold to the score scale of :meth:`score`."""
        return threshold

    def score_to_threshold(self, score: float) -> float:
        """Inverse of :meth:`threshold_to_score`."""
        return score

    def finite_thresholds(self, num_labels: int) -> tuple:
        """``(never, always)``: finite thresholds with which the criterion never / always fires."""
        raise NotImplementedError

    def finite_threshold(self, threshold: float, num_labels: int) -> float:
        """Replace ±inf by a finite threshold with the same effect (never / always fires), for JSON."""
        if math.isfinite(threshold):
            return threshold
        never, always = self.finite_thresholds(num_labels)
        return never if self.threshold_to_score(threshold) == math.inf else always

    def enabled(self, settings):
        return settings.thresholds is not None

    def check(self, settings):
        if settings.regression and settings.thresholds is not None:
            raise ValueError(
                f"exit_criterion={self.name!r} needs class probabilities, but the model is a regression "
                "(num_labels=1); use exit_criterion='patience' for regression"
            )

    def fires(self, prediction, k, state, settings):
        return self.score(prediction) >= self.threshold_to_score(settings.thresholds[k])


class ConfidenceCriterion(ThresholdCriterion):
    """Exit when the max softmax probability of the exit's prediction is ≥ θ (BoostNet / MSDNet)."""

    name = "confidence"

    def score(self, logits):
        return exit_confidence(logits)

    def finite_thresholds(self, num_labels):
        return 2.0, 0.0  # the max probability is in [1/C, 1]


class EntropyCriterion(ThresholdCriterion):
    """Exit when the entropy (nats) of the softmax is ≤ θ (DeeBERT); its score is minus the entropy."""

    name = "entropy"

    def score(self, logits):
        return -exit_entropy(logits)

    def threshold_to_score(self, threshold):
        return -threshold

    def score_to_threshold(self, score):
        return -score

    def finite_thresholds(self, num_labels):
        return -1.0, math.log(num_labels) + 1.0  # the entropy is in [0, log C]


class PatienceCriterion(ExitCriterion):
    """Exit when ``exit_patience`` consecutive exits agree (PABEE): same argmax for classification,
    ``|Δ prediction| ≤ patience_tolerance`` for regression."""

    name = "patience"

    def enabled(self, settings):
        return settings.patience is not None

    def init_state(self, batch_size, device):
        return {"count": torch.zeros(batch_size, dtype=torch.long, device=device), "previous": None}

    def fires(self, prediction, k, state, settings):
        if settings.regression:
            current = prediction.float().squeeze(-1)
            agree = (current - state["previous"]).abs() <= settings.tolerance if k > 0 else None
        else:
            current = prediction.argmax(dim=-1)
            agree = current == state["previous"] if k > 0 else None
        if agree is not None:
            state["count"] = torch.where(agree, state["count"] + 1, torch.zeros_like(state["count"]))
        state["previous"] = current
        return state["count"] >= settings.patience


EXIT_CRITERIA = {criterion.name: criterion for criterion in (ConfidenceCriterion(), EntropyCriterion(),
                                                              PatienceCriterion())}


def get_criterion(name: str) -> ExitCriterion:
    """The registered criterion called ``name``; ``ValueError`` listing the choices otherwise."""
    check_choice("exit_criterion", name, tuple(EXIT_CRITERIA))
    return EXIT_CRITERIA[name]


class ExitRule:
    """Which samples of a batch leave at each exit: the first exit whose criterion fires; the last exit takes all.

    Walk it exit by exit with :meth:`fires`; after removing samples from the batch call :meth:`keep` so that the
    criterion's per-sample state follows them.
    """

    def __init__(self, settings: ExitSettings, batch_size: int, device=None):
        if not isinstance(settings, ExitSettings):
            # A checkpoint loaded as remote code from a local folder gets the config file and the modeling file in
            # two module packages of transformers' dynamic-module cache, each with its own copy of this module: the
            # config's ExitSettings is then another class of the same fields. Rebuild it here (validated again).
            if type(settings).__name__ == "ExitSettings" and dataclasses.is_dataclass(settings):
                settings = ExitSettings(**dataclasses.asdict(settings))
            else:
                raise TypeError(f"ExitRule needs an ExitSettings, got {type(settings).__name__}")
        self.settings = settings
        self.criterion = get_criterion(settings.criterion)
        self.last = settings.num_exits - 1
        self.state = self.criterion.init_state(batch_size, device)

    def fires(self, prediction: torch.Tensor, k: int) -> torch.Tensor:
        if k == self.last:
            return torch.ones(prediction.shape[0], dtype=torch.bool, device=prediction.device)
        return self.criterion.fires(prediction, k, self.state, self.settings)

    def keep(self, keep: torch.Tensor) -> None:
        self.state = {key: (value[keep] if value is not None else None) for key, value in self.state.items()}


# ----------------------------------------------------------------------------------------------------------------
# The scores as functions
# ----------------------------------------------------------------------------------------------------------------
def exit_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability per sample (BoostNet / MSDNet confidence), shape ``(batch,)``."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def exit_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax per sample (DeeBERT's exit criterion), shape ``(batch,)``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def _threshold_criterion(criterion: str) -> ThresholdCriterion:
    found = EXIT_CRITERIA.get(criterion)
    if not isinstance(found, ThresholdCriterion):
        raise ValueError(f"exit_criterion {criterion!r} has no per-exit score (only 'confidence' and 'entropy')")
    return found


def exit_score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """A score that grows with certainty: the exit fires when ``score >= threshold_to_score(threshold)``."""
    return _threshold_criterion(criterion).score(logits)


def threshold_to_score(threshold: float, criterion: str) -> float:
    """Map a stored threshold to the score scale of :func:`exit_score`."""
    return _threshold_criterion(criterion).threshold_to_score(threshold)


def score_to_threshold(score: float, criterion: str) -> float:
    """Inverse of :func:`threshold_to_score`."""
    return _threshold_criterion(criterion).score_to_threshold(score)


__all__ = [
    "EXIT_CRITERIA",
    "ConfidenceCriterion",
    "EntropyCriterion",
    "ExitCriterion",
    "ExitRule",
    "ExitSettings",
    "PatienceCriterion",
    "ThresholdCriterion",
    "exit_confidence",
    "exit_entropy",
    "exit_score",
    "get_criterion",
    "score_to_threshold",
    "threshold_to_score",
]
