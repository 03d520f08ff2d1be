"""The paired statistics of the vision reports (examples/vision/dynamic_conv_mnist.py, pemn_mnist.py) on fabricated
run records: the difference, its 95 % interval and the verdict, checked against scipy written out."""

import os
import statistics
import sys

import pytest
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples", "vision"))

import dynamic_conv_mnist  # noqa: E402
import pemn_mnist  # noqa: E402


def interval(a, b):
    d = [100 * (x - y) for x, y in zip(a, b)]
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
    return statistics.mean(d), statistics.mean(d) - half, statistics.mean(d) + half


def test_dynamic_conv_rows_are_paired_with_static_by_seed():
    static = [0.980, 0.982, 0.979, 0.981, 0.980]
    dyconv = [0.984, 0.985, 0.983, 0.986, 0.983]  # + 0.3 to 0.5 points on every seed: holds
    condconv = [0.981, 0.980, 0.981, 0.979, 0.982]  # ± around static: not shown
    results = [{"dataset": "mnist", "row": row, "seed": seed, "test_accuracy": acc}
               for row, accs in (("static", static), ("dyconv", dyconv), ("condconv", condconv))
               for seed, acc in enumerate(accs)]
    results.append({"dataset": "digits", "row": "static", "seed": 0, "test_accuracy": 0.9})
    results.append({"dataset": "digits", "row": "dyconv", "seed": 0, "test_accuracy": 0.95})
    text = "\n".join(dynamic_conv_mnist.paired_vs_static(results))
    mean, low, high = interval(dyconv, static)
    p = stats.ttest_rel(dyconv, static).pvalue
    assert f"| mnist | dyconv | {mean:+.2f} [{low:+.2f}, {high:+.2f}] (p = {p:.3g}, n = 5) | holds |" in text
    mean, low, high = interval(condconv, static)
    assert low < 0 < high and f"| mnist | condconv | {mean:+.2f} [{low:+.2f}, {high:+.2f}]" in text
    assert "| mnist | condconv |" in text and text.count("not shown") == 2  # condconv, and digits with n = 1
    assert "| digits | dyconv | – (n = 1) | not shown |" in text


def test_pemn_is_paired_with_each_pruning_baseline_at_the_same_bytes():
    pemn = [0.95, 0.96, 0.94]
    random_prune = [0.20, 0.30, 0.25]
    magnitude_prune = [0.96, 0.93, 0.95]  # level with PEMN: not shown
    row = pemn_mnist.CURVE_PEMN
    groups = {("mnist", "mlp", row): [{"seed": s, "accuracy": a} for s, a in enumerate(pemn)],
              ("mnist", "mlp", "random-prune"): [{"seed": s, "accuracy": a} for s, a in enumerate(random_prune)],
              ("mnist", "mlp", "magnitude-prune"): [{"seed": s, "accuracy": a}
                                                    for s, a in enumerate(magnitude_prune)]}
    text = "\n".join(pemn_mnist.paired_at_equal_bytes(groups))
    mean, low, high = interval(pemn, random_prune)
    assert f"| mnist | mlp | x1 | random pruning | {mean:+.2f} [{low:+.2f}, {high:+.2f}] (p = " in text
    assert text.splitlines()[-2].endswith("n = 3) | holds |")
    mean, low, high = interval(pemn, magnitude_prune)
    assert low < 0 < high and text.splitlines()[-1].endswith("n = 3) | not shown |")
    assert "x0.5" not in text  # widths without runs are left out
    assert mean == pytest.approx(100 * statistics.mean(a - b for a, b in zip(pemn, magnitude_prune)))
