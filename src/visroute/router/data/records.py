"""Routing records from evaluation results: one row per (task, model) outcome, the router's raw material."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visroute.errors import VisrouteError
from visroute.tasks.model import CLASSIFICATION_QUESTION, task_text


def records_schema():
    import pyarrow as pa

    return pa.schema([("task_id", pa.string()), ("dataset", pa.string()), ("prompt_variant", pa.string()),
                      ("task_text", pa.string()), ("image_id", pa.string()), ("image_path", pa.string()),
                      ("model", pa.string()), ("correct", pa.bool_()), ("score", pa.float32()), ("cost", pa.float64()),
                      ("latency_s", pa.float64()), ("dataset_spec", pa.string()), ("pipeline", pa.string()),
                      ("status", pa.string()), ("error", pa.string())])


def _table(cols: dict) -> "pa.Table":  # noqa: F821
    import pyarrow as pa

    schema = records_schema()
    return pa.table({f.name: pa.array(list(cols[f.name]) if not isinstance(cols[f.name], np.ndarray) else cols[f.name],
                                      type=f.type) for f in schema}, schema=schema)


def _with_answers(table, answers: list) -> "pa.Table":  # noqa: F821
    """The records with each model's ``answer`` key (the chosen option or class index, as text; null where none)."""
    import pyarrow as pa

    return table.append_column(pa.field("answer", pa.string()), pa.array(answers, pa.string()))


def records_from_result(result_json: str | Path, model_name: str, spec=None,
                        dataset_spec: str | None = None) -> "pa.Table":  # noqa: F821
    """Turn a result JSON + its predictions Parquet into records for ``model_name``.

    A task whose call failed gets ``status`` "error" (and its reason in ``error``): it is no sample of the model's
    accuracy or cost, and ``build_table`` drops it. Every record carries the exact pipeline spec that produced it (canonical JSON) and the dataset spec, so a
    router trained on the records can rebuild the same pipeline and find the same image features. Costs and
    latencies are the per-sample values the pipeline reported; nothing is recomputed here. Classification
    results (CLIP heads) are prompt-agnostic (``prompt_variant`` "*").
    """
    import pyarrow.parquet as pq

    from visroute.pipeline.spec import PipelineSpec

    path = Path(result_json)
    from visroute.safe_load import read_json

    doc = read_json(path, "result")
    if not isinstance(doc, dict):
        raise VisrouteError(f"{path}: a result file holds a JSON object")
    v = doc.get("visroute", {})
    pq_path = path.parent / v.get("predictions_file", path.with_suffix(".parquet").name)
    if not pq_path.is_file():
        raise VisrouteError(f"predictions file {pq_path} of {path} is missing")
    if spec is None:
        if not v.get("pipeline"):
            raise VisrouteError(f"{path} records no pipeline spec; re-run it with this version of visroute")
        spec = PipelineSpec.from_dict(v["pipeline"], f"{path} pipeline")
    t = pq.read_table(pq_path).to_pandas()
    n = len(t)
    dataset_spec = dataset_spec or str(v.get("dataset_spec") or "")
    dataset = doc["dataset"]
    errors = [None if e is None or e != e else str(e) for e in t["error"]] if "error" in t else [None] * n
    common = {"status": ["ok" if e is None else "error" for e in errors], "error": errors,
              "dataset": [dataset] * n, "model": [model_name] * n, "pipeline": [spec.to_json()] * n,
              "dataset_spec": [dataset_spec] * n, "correct": t["correct"].astype(bool)}
    if doc.get("task") == "multiple_choice":
        # the option the model chose (its index, as text: what two models agree on); none where it gave no
        # usable answer. A cascade may stop when the models' answers agree (``strategies.agreement_confidence``)
        answers = [None if p is None or p != p or e is not None else str(int(p))
                   for p, e in zip(t["predicted"] if "predicted" in t else [None] * n, errors)]
        # the answer's own confidence: the top option probability (contrastive), else the generative answer's
        # token probability where it was reported (older result files have no such column)
        own = t["confidence"] if "confidence" in t else [None] * n
        scores = [float(max(s)) if len(s) else (float(c) if c is not None and c == c else np.nan)
                  for s, c in zip(t["option_scores"], own)]
        image_path = t["image_path"].astype(str) if "image_path" in t else t["image_id"].astype(str)
        return _with_answers(_table({
            **common, "task_id": t["task_id"].astype(str), "prompt_variant": [spec.prompt_variant] * n,
            "task_text": [task_text(q, list(o)) for q, o in zip(t["question"], t["options"])],
            "image_id": t["image_id"].astype(str), "image_path": image_path,
            "score": np.asarray(scores, np.float32),
            "cost": (t["call_cost"] if "call_cost" in t else t["cost"]).astype(np.float64),
            "latency_s": t["latency_s"].astype(np.float64),
        }), answers)
    if "cost" not in t or "latency_s" not in t:
        raise VisrouteError(f"{pq_path} has no per-image cost/latency columns; re-run the evaluation")
    text = task_text(CLASSIFICATION_QUESTION, list(v.get("classnames") or []))
    root = Path(dataset_spec).expanduser()
    img_paths = [str(root / i) if root.is_dir() else "" for i in t["image_id"]]
    top1 = [str(int(k[0])) if len(k) else None for k in t["topk_labels"]] if "topk_labels" in t else [None] * n
    return _with_answers(_table({
        **common, "task_id": t["image_id"].astype(str), "prompt_variant": ["*"] * n, "task_text": [text] * n,
        "image_id": t["image_id"].astype(str), "image_path": img_paths,
        "score": np.asarray([s[0] for s in t["topk_scores"]], np.float32),
        "cost": t["cost"].astype(np.float64), "latency_s": t["latency_s"].astype(np.float64),
    }), [a if st == "ok" else None for a, st in zip(top1, common["status"])])
