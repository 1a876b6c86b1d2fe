"""Classification metrics as pure functions on label arrays (CLIP_benchmark-compatible definitions)."""

from __future__ import annotations

import numpy as np


def topk_accuracy(y_true: np.ndarray, topk_pred: np.ndarray, k: int) -> float:
    """Share of samples whose true label is among the first ``k`` columns of ``topk_pred`` (n, >=k)."""
    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        return float("nan")
    topk_pred = np.asarray(topk_pred)
    if topk_pred.ndim == 1:
        topk_pred = topk_pred[:, None]
    return float((topk_pred[:, :k] == y_true[:, None]).any(axis=1).mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall (per-class accuracy) of each class; NaN for classes with no samples."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def mean_per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (= scikit-learn's balanced accuracy)."""
    recall = per_class_recall(y_true, y_pred, n_classes)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else float("nan")


def classification_metrics(y_true: np.ndarray, topk_pred: np.ndarray, n_classes: int) -> dict:
    """acc1, acc5, mean_per_class_recall, per-class accuracy and the confusion matrix in one dict."""
    y_true = np.asarray(y_true, dtype=np.int64)
    topk_pred = np.asarray(topk_pred, dtype=np.int64)
    y_pred = topk_pred[:, 0] if len(topk_pred) else np.empty(0, dtype=np.int64)
    return {
        "acc1": topk_accuracy(y_true, topk_pred, 1),
        "acc5": topk_accuracy(y_true, topk_pred, 5),
        "mean_per_class_recall": mean_per_class_recall(y_true, y_pred, n_classes),
        "per_class_accuracy": per_class_recall(y_true, y_pred, n_classes),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n_classes),
    }
