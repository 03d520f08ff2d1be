"""Paired statistics on fabricated runs: the interval and p-value equal hand computations and scipy's own test."""

import math

import numpy as np
import pytest
from scipy import stats

from hf_dynamic.data.statistics import mean_std, paired_by_seed, paired_comparison


def test_interval_and_p_value_match_a_hand_computation():
    a, b = [0.80, 0.82, 0.85], [0.78, 0.81, 0.80]
    d = np.array(a) - np.array(b)  # 0.02, 0.01, 0.05
    mean, sd = d.mean(), d.std(ddof=1)
    half = 4.30265272975 * sd / math.sqrt(3)  # t_{0.975, 2}
    result = paired_comparison(a, b)
    assert result.n == 3
    assert result.mean_diff == pytest.approx(0.02667, abs=1e-5)
    assert result.ci_low == pytest.approx(mean - half, rel=1e-9)
    assert result.ci_high == pytest.approx(mean + half, rel=1e-9)
    t = mean / (sd / math.sqrt(3))
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(t), 2), rel=1e-10)
    assert result.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    # the interval contains zero (ci_low = 0.0267 - 4.30 * 0.0208 / 1.73 < 0): not shown
    assert result.ci_low < 0 < result.ci_high and not result.holds and result.verdict == "not shown"


def test_a_consistent_gain_holds_and_a_consistent_loss_is_reversed():
    gain = paired_comparison([0.90, 0.91, 0.92, 0.93], [0.80, 0.82, 0.81, 0.83])
    assert gain.holds and gain.verdict == "holds" and gain.p_value < 0.01
    loss = paired_comparison([0.80, 0.82, 0.81, 0.83], [0.90, 0.91, 0.92, 0.93])
    assert not loss.holds and loss.verdict == "reversed"
    assert loss.mean_diff == pytest.approx(-gain.mean_diff)


def test_equal_differences_collapse_the_interval():
    result = paired_comparison([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert result.ci_low == result.ci_high == pytest.approx(0.5) and result.p_value == 0.0 and result.holds
    tie = paired_comparison([1.0, 2.0], [1.0, 2.0])
    assert tie.mean_diff == 0.0 and tie.p_value == 1.0 and tie.verdict == "not shown"


def test_paired_by_seed_uses_the_common_seeds_in_order():
    a = {4: 0.7, 5: 0.9, 6: 0.8, 7: 0.1}
    b = {6: 0.75, 4: 0.6, 5: 0.85}
    assert paired_by_seed(a, b) == paired_comparison([0.7, 0.9, 0.8], [0.6, 0.85, 0.75])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one b per a"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_comparison([1.0], [2.0])
    with pytest.raises(ValueError, match=r"a\[1\] must be a finite number"):
        paired_comparison([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"b\[0\] must be a number"):
        paired_comparison([1.0, 2.0], ["1.0", 2.0])
    with pytest.raises(ValueError, match="confidence must be a number > 0 and < 1"):
        paired_comparison([1.0, 2.0], [1.0, 3.0], confidence=95)


def test_mean_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert mean_std([np.float64(5.0)]) == (5.0, 0.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


def test_format_scales_to_points():
    text = paired_comparison([0.90, 0.91, 0.92], [0.80, 0.82, 0.81]).format(scale=100, digits=1)
    assert text.startswith("+10.0 [") and text.endswith("n = 3)")
