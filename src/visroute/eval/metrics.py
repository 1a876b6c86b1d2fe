"""Classification metrics as pure functions on label arrays (CLIP_benchmark-compatible definitions).

Labels and predictions must be class indices in ``0..n_classes-1``; anything else is an error, never a
silently wrapped index or a matrix sized by a stray label. Top-5 accuracy is NaN (not applicable) when
there are fewer than 5 classes, as in CLIP_benchmark, instead of a trivial 1.0.
"""

from __future__ import annotations

import numpy as np

from visroute.errors import VisrouteError

#: Largest class count for which ``classification_metrics`` returns a dense confusion matrix (128 MiB of int64).
MAX_DENSE_CONFUSION_CLASSES = 4096


def check_class_indices(values: np.ndarray, n_classes: int, what: str = "label") -> np.ndarray:
    """``values`` as int64, or a VisrouteError naming the first position outside ``0..n_classes-1``."""
    arr = np.asarray(values)
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise VisrouteError(f"{what}s must be integer class indices, got values of type {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr < 0) | (arr >= n_classes)) if arr.size else []
    if len(bad):
        i = int(bad[0]) if arr.ndim == 1 else int(bad[0]) // max(1, arr.shape[-1])
        raise VisrouteError(f"{what} {int(arr.flat[bad[0]])} at position {i} is not a class index "
                            f"(0..{n_classes - 1} for {n_classes} classes)")
    return arr


def topk_accuracy(y_true: np.ndarray, topk_pred: np.ndarray, k: int, n_classes: int | None = None) -> float:
    """Share of samples whose true label is among the first ``k`` columns of ``topk_pred`` (n, >=k).

    NaN when there are no samples, or when ``n_classes`` is given and is below ``k`` (not applicable).
    """
    y_true = np.asarray(y_true)
    if len(y_true) == 0 or (n_classes is not None and n_classes < k):
        return float("nan")
    topk_pred = np.asarray(topk_pred)
    if topk_pred.ndim == 1:
        topk_pred = topk_pred[:, None]
    return float((topk_pred[:, :k] == y_true[:, None]).any(axis=1).mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class; sized by ``n_classes``, never by a label value."""
    y_true = check_class_indices(y_true, n_classes, "label")
    y_pred = check_class_indices(y_pred, n_classes, "prediction")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall (per-class accuracy) of each class; NaN for classes with no samples. Memory O(n_classes)."""
    y_true = check_class_indices(y_true, n_classes, "label")
    y_pred = check_class_indices(y_pred, n_classes, "prediction")
    support = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / np.maximum(support, 1), np.nan)


def mean_per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (= scikit-learn's balanced accuracy)."""
    recall = per_class_recall(y_true, y_pred, n_classes)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def classification_metrics(y_true: np.ndarray, topk_pred: np.ndarray, n_classes: int) -> dict:
    """acc1, acc5, mean_per_class_recall, per-class accuracy and the confusion matrix in one dict.

    The confusion matrix is None above ``MAX_DENSE_CONFUSION_CLASSES`` classes (it would need n_classes^2 cells).
    """
    y_true = check_class_indices(y_true, n_classes, "label")
    topk_pred = check_class_indices(topk_pred, n_classes, "prediction")
    y_pred = topk_pred[:, 0] if len(topk_pred) else np.empty(0, dtype=np.int64)
    return {
        "acc1": topk_accuracy(y_true, topk_pred, 1, n_classes),
        "acc5": topk_accuracy(y_true, topk_pred, 5, n_classes),
        "mean_per_class_recall": mean_per_class_recall(y_true, y_pred, n_classes),
        "per_class_accuracy": per_class_recall(y_true, y_pred, n_classes),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n_classes)
        if n_classes <= MAX_DENSE_CONFUSION_CLASSES else None,
    }
