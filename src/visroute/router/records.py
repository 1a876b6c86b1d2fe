"""Routing records from evaluation results: one row per (task, model) outcome, the router's raw material."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from visroute.errors import VisrouteError
from visroute.tasks.model import CLASSIFICATION_QUESTION, task_text


def records_schema():
    import pyarrow as pa

    return pa.schema([("task_id", pa.string()), ("dataset", pa.string()), ("prompt_variant", pa.string()),
                      ("task_text", pa.string()), ("image_id", pa.string()), ("image_path", pa.string()),
                      ("model", pa.string()), ("correct", pa.bool_()), ("score", pa.float32()), ("cost", pa.float64()),
                      ("latency_s", pa.float64())])


def _table(cols: dict) -> "pa.Table":  # noqa: F821
    import pyarrow as pa

    schema = records_schema()
    return pa.table({f.name: pa.array(list(cols[f.name]) if not isinstance(cols[f.name], np.ndarray) else cols[f.name],
                                      type=f.type) for f in schema}, schema=schema)


def records_from_result(result_json: str | Path, model_name: str, seconds_price: float = 0.0) -> "pa.Table":  # noqa: F821
    """Turn a result JSON + its predictions Parquet into records for ``model_name``.

    Classification results (CLIP heads) are prompt-agnostic (``prompt_variant`` "*"); their per-image cost is
    the measured feature-time share priced at ``seconds_price`` per second.
    """
    import pyarrow.parquet as pq

    path = Path(result_json)
    doc = json.loads(path.read_text())
    v = doc.get("visroute", {})
    pq_path = path.parent / v.get("predictions_file", path.with_suffix(".parquet").name)
    if not pq_path.is_file():
        raise VisrouteError(f"predictions file {pq_path} of {path} is missing")
    t = pq.read_table(pq_path).to_pandas()
    n = len(t)
    dataset = doc["dataset"]
    if doc.get("task") == "multiple_choice":
        texts = [task_text(q, list(o), dataset) for q, o in zip(t["question"], t["options"])]
        scores = [float(max(s)) if len(s) else np.nan for s in t["option_scores"]]
        return _table({
            "task_id": t["task_id"].astype(str), "dataset": [dataset] * n,
            "prompt_variant": ["*" if v.get("head") == "clip-options" else str(v.get("prompt", "default"))] * n,
            "task_text": texts, "image_id": t["image_id"].astype(str), "image_path": t["image_id"].astype(str),
            "model": [model_name] * n, "correct": t["correct"].astype(bool), "score": np.asarray(scores, np.float32),
            "cost": (t["call_cost"] if "call_cost" in t else t["cost"]).astype(np.float64),
            "latency_s": t["latency_s"].astype(np.float64),
        })
    classes = v.get("classnames") or []
    text = task_text(CLASSIFICATION_QUESTION, list(classes), dataset)
    per = v.get("seconds_per_image") or (v.get("feature_time_s") or 0.0) / max(1, v.get("n_images") or n)
    root = Path(str(v.get("dataset_spec", ""))).expanduser()
    img_paths = [str(root / i) if root.is_dir() else str(i) for i in t["image_id"]]
    return _table({
        "task_id": t["image_id"].astype(str), "dataset": [dataset] * n, "prompt_variant": ["*"] * n,
        "task_text": [text] * n, "image_id": t["image_id"].astype(str), "image_path": img_paths,
        "model": [model_name] * n, "correct": t["correct"].astype(bool),
        "score": np.asarray([s[0] for s in t["topk_scores"]], np.float32),
        "cost": np.full(n, per * seconds_price), "latency_s": np.full(n, per),
    })
