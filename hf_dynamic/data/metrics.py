"""GLUE metrics (Wang et al., 2019), computed offline with scikit-learn and SciPy.

Same key names as ``evaluate.load("glue", task)`` (which fetches its script from the Hub and fails offline):
CoLA ``matthews_correlation``; MRPC and QQP ``accuracy`` and ``f1`` (positive class 1); STS-B ``pearson`` and
``spearmanr``; every other task ``accuracy``. Values are fractions (not percentages), as Python floats.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .glue import get_glue_task


def _as_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per example (1-D), got shape {array.shape}")
    return array


def _class_ids(values: np.ndarray, name: str, num_labels: int) -> np.ndarray:
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise ValueError(
                f"{name} must be class ids for a classification task; got non-integer values "
                "(pass logits through glue_compute_metrics_fn, which takes the argmax)"
            )
    elif values.dtype.kind not in "iub":
        raise ValueError(f"{name} must be integer class ids, got dtype {values.dtype}")
    values = values.astype(np.int64)
    bad = values[(values < 0) | (values >= num_labels)]
    if bad.size:
        raise ValueError(f"{name} holds class id {int(bad[0])} outside [0, {num_labels})")
    return values


def compute_glue_metrics(task: str, predictions, references) -> dict[str, float]:
    """GLUE metrics of ``predictions`` against ``references`` for ``task`` (a Hub task name).

    ``predictions`` are class ids (classification) or scores (STS-B), one per example. Raises ``ValueError``
    for an unknown task, mismatched lengths, no examples, or class ids out of range.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    spec = get_glue_task(task)
    predictions = _as_1d(predictions, "predictions")
    references = _as_1d(references, "references")
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} vs {len(references)}"
        )
    if predictions.size == 0:
        raise ValueError("predictions and references are empty")
    if spec.is_regression:
        predictions = predictions.astype(np.float64)
        references = references.astype(np.float64)
        return {
            "pearson": float(pearsonr(predictions, references)[0]),
            "spearmanr": float(spearmanr(predictions, references)[0]),
        }
    predictions = _class_ids(predictions, "predictions", spec.num_labels)
    references = _class_ids(references, "references", spec.num_labels)
    if spec.name == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    result = {"accuracy": float(np.mean(predictions == references))}
    if spec.name in ("mrpc", "qqp"):
        result["f1"] = float(f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0))
    return result


def glue_compute_metrics_fn(task: str) -> Callable[..., dict[str, float]]:
    """A ``compute_metrics`` for ``transformers.Trainer`` on GLUE ``task``.

    It takes an ``EvalPrediction`` (or a ``(predictions, label_ids)`` pair); when the model returns several
    outputs (a tuple), the first is the logits. Classification takes the argmax over the last axis; STS-B
    squeezes the single output. Returns :func:`compute_glue_metrics`'s dict.
    """
    spec = get_glue_task(task)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        if hasattr(eval_prediction, "predictions"):
            predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        else:
            predictions, labels = eval_prediction
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        predictions = np.asarray(predictions)
        if spec.is_regression:
            predictions = predictions.reshape(len(predictions), -1)
            if predictions.shape[1] != 1:
                raise ValueError(f"STS-B expects one output per example, got shape {predictions.shape}")
            predictions = predictions[:, 0]
        else:
            predictions = np.argmax(predictions, axis=-1)
        return compute_glue_metrics(spec.name, predictions, labels)

    compute_metrics.__name__ = f"compute_{spec.name}_metrics"
    return compute_metrics
