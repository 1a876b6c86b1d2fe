"""Raw label values (from a manifest row, a dataset column) turned into class indices, or one error naming the row.

A label is either a class index (an integer, or a whole number written as ``2.0``) or a class name; every row
of one dataset uses the same kind. Missing values (empty, null, NaN), fractions, booleans, negative indices and
indices beyond the class list are refused before anything is sized by them: without class names, indices must
stay below ``MAX_INFERRED_CLASSES``, so a stray ``1e9`` cannot ask for a billion classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from visroute.errors import VisrouteError

#: Most classes inferred from integer labels alone (class names "0".."N-1"); ImageNet-21k fits.
MAX_INFERRED_CLASSES = 100_000

_INTEGER = re.compile(r"[+-]?\d+")
_MISSING_WORDS = {"nan", "null"}


class DatasetError(VisrouteError):
    """A dataset spec could not be opened or its labels do not match its class names."""


def _from_float(x: float, shown: str) -> tuple[str, Any]:
    if math.isnan(x):
        return "missing", None
    if not math.isfinite(x):
        return "bad", f"{shown} is not a finite number"
    if not x.is_integer():
        return "bad", f"{shown} is not a whole number (class indices are integers)"
    return "index", int(x)


def classify_label(value: Any) -> tuple[str, Any]:
    """('index', int) | ('name', str) | ('missing', None) | ('bad', reason) for one raw label value."""
    if value is None:
        return "missing", None
    if isinstance(value, (bool, np.bool_)):
        return "bad", f"{value!r} is a boolean, not a class index or name"
    if isinstance(value, (int, np.integer)):
        return "index", int(value)
    if isinstance(value, (float, np.floating)):
        return _from_float(float(value), repr(float(value)))
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in _MISSING_WORDS:
            return "missing", None
        if _INTEGER.fullmatch(text):
            return "index", int(text)
        try:
            number = float(text)
        except ValueError:
            return "name", text
        return _from_float(number, repr(value))
    return "bad", f"a {type(value).__name__} value is not a class index or name"


def _range_error(value: int, at: str, classnames: Sequence[str] | None) -> DatasetError:
    n = len(classnames) if classnames is not None else MAX_INFERRED_CLASSES
    if value < 0:
        return DatasetError(f"{at}: label {value} is negative; labels are class indices 0..{n - 1} "
                            "or class names (an unlabelled row cannot be evaluated)")
    if classnames is not None:
        return DatasetError(f"{at}: label {value} is out of range for {n} class names (indices 0..{n - 1})")
    return DatasetError(f"{at}: label {value} is out of range: without class names, integer labels are "
                        f"class indices below {n:,} (give the class names, or use class-name labels)")


def _index_labels(indices: np.ndarray, where: Callable[[int], str],
                  classnames: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    n = len(classnames) if classnames is not None else MAX_INFERRED_CLASSES
    bad = np.flatnonzero((indices < 0) | (indices >= n))
    if len(bad):
        raise _range_error(int(indices[bad[0]]), where(int(bad[0])), classnames)
    names = list(classnames) if classnames is not None else [str(k) for k in range(int(indices.max(initial=-1)) + 1)]
    return indices, names


def labels_to_indices(values: Sequence[Any], where: Callable[[int], str],
                      classnames: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Validate raw labels; returns (int64 class indices, class names).

    ``where(i)`` names row ``i`` in error messages (a file and line, a dataset row). With integer labels,
    ``classnames`` (if given) sets the valid range, else names "0".."max" are made up; with class-name
    labels, the names are the sorted distinct values.
    """
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and arr.dtype.kind in "iu":  # a whole integer column: checked without a Python loop
        return _index_labels(arr.astype(np.int64), where, classnames)
    kinds = [classify_label(v) for v in values]
    for i, (kind, v) in enumerate(kinds):
        if kind == "missing":
            raise DatasetError(f"{where(i)}: the label is missing (empty, null or NaN)")
        if kind == "bad":
            raise DatasetError(f"{where(i)}: bad label: {v}")
    if not kinds:
        return np.empty(0, np.int64), list(classnames or [])
    first = kinds[0][0]
    for i, (kind, v) in enumerate(kinds):
        if kind != first:
            other = f"the class index {kinds[0][1]}" if first == "index" else f"the class name {kinds[0][1]!r}"
            this = f"the class index {v}" if kind == "index" else f"the class name {v!r}"
            raise DatasetError(f"{where(i)}: label is {this}, but {where(0)} gives {other}; "
                               "use class indices in every row or class names in every row")
    if first == "index":
        n = len(classnames) if classnames is not None else MAX_INFERRED_CLASSES
        bad = next((i for i, (_, v) in enumerate(kinds) if not 0 <= v < n), None)  # before int64 could overflow
        if bad is not None:
            raise _range_error(kinds[bad][1], where(bad), classnames)
        return _index_labels(np.asarray([v for _, v in kinds], dtype=np.int64), where, classnames)
    names = sorted({v for _, v in kinds})
    lookup = {c: k for k, c in enumerate(names)}
    return np.asarray([lookup[v] for _, v in kinds], dtype=np.int64), names
