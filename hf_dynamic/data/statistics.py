"""Paired statistics for the evidence tables: is variant A better than variant B over the same seeds?

Each seed gives one run of A and one of B (same data, same seed, same schedule), so the comparison is *paired*:
the per-seed differences ``d_i = a_i - b_i`` carry the evidence, and the spread that matters is the spread of the
differences, not of each variant alone. For ``n`` seeds (``docs/data.md``, "## Paired comparisons"):

- mean difference ``d̄ = Σ d_i / n`` and its standard error ``s_d / √n`` (``s_d`` the sample std, ``n - 1``);
- the 95 % confidence interval ``d̄ ± t_{0.975, n-1} · s_d / √n`` (Student's t, two-sided);
- the paired t-test's two-sided p-value (``scipy.stats.ttest_rel``), the same statistic.

A claim "A > B" *holds* only where the whole interval lies above zero (:attr:`PairedComparison.holds`). With all
differences equal (``s_d = 0``) the interval collapses to the point ``d̄`` and the p-value is 0 (``d̄ ≠ 0``) or 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

from ..core.validation import check_number

__all__ = ["PairedComparison", "paired_comparison", "paired_by_seed", "mean_std"]


@dataclass(frozen=True)
class PairedComparison:
    """The paired difference ``a - b`` over ``n`` seeds (see the module docstring for the formulas)."""

    n: int
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float
    test: str = "paired t-test (two-sided)"

    @property
    def holds(self) -> bool:
        """True where the interval excludes zero from below (A is better than B at this confidence)."""
        return self.n >= 2 and self.ci_low > 0

    @property
    def verdict(self) -> str:
        """``"holds"``, ``"reversed"`` (interval below zero) or ``"not shown"`` (the interval contains zero)."""
        if self.n < 2:
            return "not shown"
        if self.ci_low > 0:
            return "holds"
        if self.ci_high < 0:
            return "reversed"
        return "not shown"

    def to_dict(self) -> dict:
        return {**asdict(self), "holds": self.holds, "verdict": self.verdict}

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """``+1.23 [0.45, 2.01] (p = 0.03, n = 3)`` with values multiplied by ``scale`` (100 for percentages)."""
        f = f"{{:+.{digits}f}}"
        return (f"{f.format(self.mean_diff * scale)} [{f.format(self.ci_low * scale)}, "
                f"{f.format(self.ci_high * scale)}] (p = {self.p_value:.3g}, n = {self.n})")


def _finite(value, name: str) -> float:
    if isinstance(value, np.generic):  # numpy scalars from a table are numbers too
        value = value.item()
    check_number(name, value)  # a real, finite number (NaN and inf refused)
    return float(value)


def _values(values: Sequence[float], name: str) -> np.ndarray:
    return np.asarray([_finite(value, f"{name}[{i}]") for i, value in enumerate(values)], dtype=np.float64)


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedComparison:
    """Paired difference ``a - b`` (``a[i]`` and ``b[i]`` from the same seed): mean, interval, p-value.

    Raises ``ValueError`` when the lengths differ, a value is not a finite number, fewer than two pairs are given
    or ``confidence`` is not in (0, 1).
    """
    check_number("confidence", confidence, gt=0, lt=1)
    a_values, b_values = _values(a, "a"), _values(b, "b")
    if len(a_values) != len(b_values):
        raise ValueError(f"paired_comparison needs one b per a: got {len(a_values)} and {len(b_values)} values")
    n = len(a_values)
    if n < 2:
        raise ValueError(f"paired_comparison needs at least 2 pairs for an interval, got {n}")
    diffs = a_values - b_values
    mean = float(diffs.mean())
    std = float(diffs.std(ddof=1))
    if std == 0.0:
        low = high = mean
        p_value = 1.0 if mean == 0.0 else 0.0
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
        p_value = float(stats.ttest_rel(a_values, b_values).pvalue)
    return PairedComparison(n=n, mean_diff=mean, std_diff=std, ci_low=low, ci_high=high, p_value=p_value,
                            confidence=confidence)


def paired_by_seed(a: Mapping[int, float], b: Mapping[int, float], confidence: float = 0.95) -> PairedComparison:
    """:func:`paired_comparison` over the seeds both mappings (seed -> metric) hold, in seed order."""
    seeds = sorted(set(a) & set(b))
    return paired_comparison([a[s] for s in seeds], [b[s] for s in seeds], confidence)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """``(mean, sample std (0 for one value), n)`` of finite values; ``ValueError`` on none."""
    array = _values(values, "values")
    if len(array) == 0:
        raise ValueError("mean_std needs at least one value")
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0, len(array)
