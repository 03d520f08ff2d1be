"""The paired-comparison cell of the vision reports (dynamic_conv_mnist.py, pemn_mnist.py)."""

from hf_dynamic.data.statistics import paired_by_seed


def paired_cell(a: dict, b: dict) -> str:
    """``"+0.32 [+0.11, +0.53] (p = 0.0131, n = 5) | holds"``: accuracy ``a − b`` in points, paired over the seeds
    both ``{seed: accuracy}`` maps hold, with its 95 % interval, the paired t-test and the verdict
    (``hf_dynamic.data.statistics``, docs/data.md "## Paired comparisons"); ``"– (n = 1) | not shown"`` below 2."""
    common = len(set(a) & set(b))
    if common < 2:
        return f"– (n = {common}) | not shown"
    comparison = paired_by_seed(a, b)
    return f"{comparison.format(scale=100)} | {comparison.verdict}"
