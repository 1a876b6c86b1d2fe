"""Result files: one JSON per run (CLIP_benchmark keys + visroute's own) and per-sample Parquet predictions."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError
from visroute.io import atomic_write_json, atomic_write_parquet
from visroute.safe_load import read_json


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")[:80] or "x"


def result_stem(dataset: str, model: str, head: str, prompts: str) -> str:
    return "__".join(slug(x) for x in (dataset, model, head, prompts))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_json(path: Path, doc: dict) -> None:
    atomic_write_json(path, _jsonable(doc), indent=2)


def write_predictions_parquet(path: Path, image_ids: list[str], labels: np.ndarray, classnames: list[str],
                              topk_idx: np.ndarray, topk_scores: np.ndarray, extra: dict[str, list] | None = None) -> None:
    """Per-sample predictions: image id, true label, top-k labels and scores — raw material for routing."""
    import pyarrow as pa

    names = np.asarray(classnames, dtype=object)
    cols = {
        "image_id": pa.array(image_ids, pa.string()),
        "label": pa.array(labels.astype(np.int32)),
        "label_name": pa.array([str(names[y]) if y >= 0 else None for y in labels], pa.string()),
        "topk_labels": pa.array(topk_idx.astype(np.int32).tolist(), pa.list_(pa.int32())),
        "topk_names": pa.array([[str(names[j]) for j in row] for row in topk_idx], pa.list_(pa.string())),
        "topk_scores": pa.array(topk_scores.astype(np.float32).tolist(), pa.list_(pa.float32())),
        "correct": pa.array((topk_idx[:, 0] == labels) if len(labels) else np.zeros(0, bool)),
    }
    for k, v in (extra or {}).items():
        if k not in cols:
            try:
                cols[k] = pa.array(v)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                cols[k] = pa.array([json.dumps(x) for x in v], pa.string())
    atomic_write_parquet(path, pa.table(cols))


def read_results(directory: Path) -> list[dict]:
    """All result JSONs under ``directory`` (recursively), skipping files that are not visroute results."""
    out = []
    for f in sorted(Path(directory).rglob("*.json")):
        try:
            doc = read_json(f, "result")
        except VisrouteError:
            continue
        if isinstance(doc, dict) and "metrics" in doc and "dataset" in doc and "model" in doc:
            doc["_file"] = str(f)
            out.append(doc)
    return out
