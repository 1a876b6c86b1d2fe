"""Evaluating task pipelines (vlm, vlm+llm, clip-options): same result JSON + Parquet as the CLIP heads,
plus cost, latency and token columns, and how each answer was parsed."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from visroute.eval.results import result_stem, write_json
from visroute.tasks.model import Task


def evaluate_tasks(pipeline, tasks: list[Task], dataset_name: str, output: Path, prompt_label: str,
                   skipped_rows: list[dict] | None = None, random_weights: bool = False,
                   dataset_spec: str | None = None, progress: bool = False) -> dict:
    """Run a task pipeline over tasks; write the result JSON (with the pipeline's spec) and per-task Parquet.

    A task whose call failed is kept with its ``error`` (its record is marked so, never a sample); when every call
    failed, ``CallsFailed`` is raised and nothing is written. ``progress``: a bar over the tasks (finished calls,
    failures beside them; see ``visroute.log.Progress`` for when it shows)."""
    from visroute.log import Progress

    t0 = time.perf_counter()
    with Progress(len(tasks), f"{dataset_name} ({pipeline.name})", "task", progress) as bar:
        preds = pipeline.predict(tasks, bar)
    wall = time.perf_counter() - t0
    correct = np.array([p.predicted is not None and p.predicted == t.answer for t, p in zip(tasks, preds)], dtype=bool)
    rules = Counter(p.parse_rule for p in preds)
    unparsable = [p for p in preds if p.predicted is None and p.error is None]
    errors = [p for p in preds if p.error is not None]
    if preds and len(errors) == len(preds):  # nothing was measured: no result a re-run would take for one
        from visroute.errors import CallsFailed

        raise CallsFailed(f"{dataset_name}: all {len(preds)} call(s) of {' + '.join(pipeline.models)} failed "
                          f"({' '.join(str(errors[0].error).split())[:160]}); nothing stored, a re-run measures it again")
    measured = np.array([p.error is None for p in preds], dtype=bool)
    lat = np.array([p.latency_s for p in preds]) if preds else np.zeros(0)
    cost = np.array([p.cost for p in preds]) if preds else np.zeros(0)
    n_options = np.array([len(t.options) for t in tasks]) if tasks else np.zeros(0)
    models = " + ".join(pipeline.models)
    stem = result_stem(dataset_name, models, pipeline.name, prompt_label)
    json_path, parquet_path = Path(output) / f"{stem}.json", Path(output) / f"{stem}.parquet"
    metrics = {
        # over the tasks measured: a failed call is an error (counted in n_errors), not a wrong answer
        "acc1": float(correct[measured].mean()) if measured.any() else float("nan"),
        "chance_acc1": float(np.mean(1.0 / n_options)) if len(n_options) else float("nan"),
    }
    doc = {
        "dataset": dataset_name,
        "model": models,
        "pretrained": None,
        "task": "multiple_choice",
        "metrics": metrics,
        "visroute": {
            "head": pipeline.name,
            "models": pipeline.models,
            "pipeline": spec.to_dict() if (spec := getattr(pipeline, "spec", None)) is not None else None,
            "dataset_spec": dataset_spec,
            "prompt": prompt_label,
            "n_tasks": len(tasks),
            "n_correct": int(correct.sum()),
            "n_unparsable": len(unparsable),
            "n_errors": len(errors),
            "parse_rules": dict(rules),
            "errors": [{"task_id": p.task_id, "error": p.error} for p in errors][:100],
            "skipped_rows": skipped_rows or [],
            "n_answer_not_in_options": sum(1 for t in tasks if t.answer is None),
            "cost_total": float(cost.sum()),
            "cost_per_task": float(cost.mean()) if len(cost) else None,
            "latency_mean_s": float(lat.mean()) if len(lat) else None,
            "latency_p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p95_s": float(np.percentile(lat, 95)) if len(lat) else None,
            "input_tokens": int(sum(p.input_tokens for p in preds)),
            "output_tokens": int(sum(p.output_tokens for p in preds)),
            "images": int(sum(p.images for p in preds)),
            "n_cached": int(sum(p.cached for p in preds)),
            "random_weights": random_weights,
            "wall_time_s": wall,
            "predictions_file": parquet_path.name,
        },
    }
    _write_task_parquet(parquet_path, tasks, preds, correct)
    write_json(json_path, doc)
    doc["_file"] = str(json_path)
    return doc


def _write_task_parquet(path: Path, tasks: list[Task], preds, correct: np.ndarray) -> None:
    import pyarrow as pa

    rows = [p.as_row() for p in preds]
    table = pa.table({
        "task_id": [t.task_id for t in tasks],
        "dataset": [t.dataset for t in tasks],
        "image_id": [t.image if isinstance(t.image, str) else t.task_id for t in tasks],
        "image_path": [t.image if isinstance(t.image, str) else "" for t in tasks],
        "question": [t.question for t in tasks],
        "options": pa.array([t.options for t in tasks], pa.list_(pa.string())),
        "answer": pa.array([t.answer for t in tasks], pa.int32()),
        "predicted": pa.array([r["predicted"] for r in rows], pa.int32()),
        "correct": pa.array(correct.tolist(), pa.bool_()),
        "parse_rule": [r["parse_rule"] for r in rows],
        "raw_answer": [r["raw_answer"] for r in rows],
        "intermediate": [r["intermediate"] for r in rows],
        "latency_s": pa.array([r["latency_s"] for r in rows], pa.float64()),
        "input_tokens": pa.array([r["input_tokens"] for r in rows], pa.int64()),
        "output_tokens": pa.array([r["output_tokens"] for r in rows], pa.int64()),
        "images": pa.array([r["images"] for r in rows], pa.int32()),
        "cost": pa.array([r["cost"] for r in rows], pa.float64()),
        "call_cost": pa.array([r["call_cost"] for r in rows], pa.float64()),
        "cached": pa.array([r["cached"] for r in rows], pa.bool_()),
        "error": [r["error"] for r in rows],
        "option_scores": pa.array([r["option_scores"] for r in rows], pa.list_(pa.float32())),
        "confidence": pa.array([r.get("confidence") for r in rows], pa.float32()),  # null: none reported
    })
    from visroute.io import atomic_write_parquet

    atomic_write_parquet(path, table)
