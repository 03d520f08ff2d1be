"""hf_dynamic.compute_glue_metrics / glue_compute_metrics_fn against hand-computed values."""

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_dynamic.data.metrics import compute_glue_metrics, glue_compute_metrics_fn

# preds vs refs: TP = 2 (rows 0, 3), TN = 1 (row 1), FP = 1 (row 2), FN = 1 (row 4).
PREDS = [1, 0, 1, 1, 0]
REFS = [1, 0, 0, 1, 1]


def test_accuracy_and_f1():
    # accuracy 3/5; precision 2/3, recall 2/3 -> F1 2/3.
    for task in ("mrpc", "qqp"):
        result = compute_glue_metrics(task, PREDS, REFS)
        assert set(result) == {"accuracy", "f1"}
        assert result["accuracy"] == pytest.approx(0.6)
        assert result["f1"] == pytest.approx(2 / 3)
    for task in ("sst2", "rte", "qnli", "wnli"):
        assert compute_glue_metrics(task, PREDS, REFS) == {"accuracy": pytest.approx(0.6)}
    assert compute_glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2]) == {"accuracy": pytest.approx(0.75)}
    assert all(isinstance(v, float) for v in compute_glue_metrics("mrpc", PREDS, REFS).values())


def test_matthews_correlation():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6.
    assert compute_glue_metrics("cola", PREDS, REFS) == {"matthews_correlation": pytest.approx(1 / 6)}
    assert compute_glue_metrics("cola", REFS, REFS)["matthews_correlation"] == pytest.approx(1.0)


def test_pearson_spearman():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [1.0, 3.0, 2.0, 100.0]
    # Pearson: deviations x (-1.5, -.5, .5, 1.5), y (-25.5, -23.5, -24.5, 73.5): 148 / sqrt(5 * 7205).
    # Spearman: ranks of y (1, 3, 2, 4): 4 / 5.
    result = compute_glue_metrics("stsb", x, y)
    assert set(result) == {"pearson", "spearmanr"}
    assert result["pearson"] == pytest.approx(148 / math.sqrt(5 * 7205))
    assert result["spearmanr"] == pytest.approx(0.8)


def test_trainer_compute_metrics_fn():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5], [-3.0, 3.0], [1.0, 0.0]], dtype=np.float32)
    hidden = np.zeros((5, 4), dtype=np.float32)
    fn = glue_compute_metrics_fn("mrpc")
    # A model returning several outputs gives a tuple: the first is the logits.
    result = fn(EvalPrediction(predictions=(logits, hidden), label_ids=np.array(REFS)))
    assert result == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    assert fn((logits, np.array(REFS))) == result
    stsb = glue_compute_metrics_fn("stsb")
    result = stsb(EvalPrediction(predictions=np.array([[1.0], [2.0], [3.0], [4.0]]),
                                 label_ids=np.array([1.0, 3.0, 2.0, 100.0])))
    assert result["spearmanr"] == pytest.approx(0.8)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown GLUE task 'glue'"):
        compute_glue_metrics("glue", PREDS, REFS)
    with pytest.raises(ValueError, match="differ in length: 4 vs 5"):
        compute_glue_metrics("rte", PREDS[:4], REFS)
    with pytest.raises(ValueError, match="non-integer values"):
        compute_glue_metrics("rte", [0.2, 0.7, 0.1, 0.9, 0.3], REFS)
    with pytest.raises(ValueError, match=r"class id 2 outside \[0, 2\)"):
        compute_glue_metrics("rte", [0, 1, 2, 1, 0], REFS)
    with pytest.raises(ValueError, match="empty"):
        compute_glue_metrics("cola", [], [])
    with pytest.raises(ValueError, match=r"shape \(5, 2\)"):
        compute_glue_metrics("rte", np.zeros((5, 2)), REFS)
