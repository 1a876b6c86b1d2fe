"""One evaluation: dataset -> cached features -> head -> metrics + result files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visroute.data.datasets import ImageDataset, load_dataset
from visroute.data.text import load_templates, read_string_list
from visroute.errors import VisrouteError
from visroute.eval.metrics import classification_metrics
from visroute.eval.results import result_stem, write_json, write_predictions_parquet
from visroute.features.cache import FeatureCache, FeatureSet
from visroute.models import ContrastiveModel, load_model, parse_model_spec
from visroute.pipeline.spec import PipelineSpec

@dataclass
class RunOptions:
    """How an evaluation runs (what runs is the ``PipelineSpec``): where results go, how images are read, and the
    feature cache (an engine's, e.g. Ray's; None: the local one)."""

    output: Path = Path("results")
    classnames: str | None = None   # class names overriding the dataset's (FILE or FILE.json:KEY)
    batch_size: int = 64
    workers: int | None = None
    shard_size: int = 2048
    skip_existing: bool = False
    progress: bool = False
    cache: FeatureCache | None = None


def prompts_label(spec: PipelineSpec) -> str:
    if spec.entry.templates:
        if isinstance(spec.templates, (list, tuple)):
            return "inline-templates"
        return Path(spec.templates).name if spec.templates else "default-templates"
    return Path(spec.descriptions).name if spec.descriptions else "none"


def result_paths(output: Path, dataset_name: str, model_spec: str, spec: PipelineSpec) -> tuple[Path, Path]:
    stem = result_stem(dataset_name, model_spec, spec.head, prompts_label(spec))
    return output / f"{stem}.json", output / f"{stem}.parquet"


def predict_features(head, features: FeatureSet, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream the cached shards through a fitted head: (item indices, top-k class indices, top-k scores)."""
    idx_parts, top_parts, score_parts = [], [], []
    for indices, emb in features.iter_shards():
        if len(indices) == 0:
            continue
        top, scores = head.predict_topk(emb, k)
        idx_parts.append(indices)
        top_parts.append(top)
        score_parts.append(scores)
    if not idx_parts:
        return np.empty(0, np.int64), np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    return np.concatenate(idx_parts), np.concatenate(top_parts), np.concatenate(score_parts)


def evaluate(spec: PipelineSpec | str | ContrastiveModel, dataset: str | ImageDataset, run: RunOptions | None = None,
             model: ContrastiveModel | None = None) -> dict:
    """Evaluate one pipeline spec (or a model, zero-shot) on one dataset; returns the result document (also written
    to ``run.output``). ``model``: the spec's contrastive model, already loaded."""
    run = run or RunOptions()
    if isinstance(spec, ContrastiveModel):
        spec, model = PipelineSpec(model=spec.spec), spec
    elif isinstance(spec, str):
        spec = PipelineSpec(model=spec)
    if spec.entry.kind != "classify":
        raise VisrouteError(f"head '{spec.head}' answers tasks; evaluate it with visroute.eval.task_eval")
    cache = run.cache or FeatureCache()
    t0 = time.perf_counter()
    classnames = read_string_list(run.classnames, "classnames", VisrouteError) if run.classnames else None
    ds = load_dataset(dataset, classnames) if isinstance(dataset, str) else dataset
    spec_text = model.spec if model is not None else parse_model_spec(spec.model).text
    json_path, parquet_path = result_paths(Path(run.output), ds.name, spec_text, spec)
    json_path.parent.mkdir(parents=True, exist_ok=True)  # before any work: a bad output path fails at once
    if run.skip_existing and json_path.is_file():
        doc = _existing_result(json_path)
        if doc is not None:
            return doc
    m = model if model is not None else load_model(spec.model, device=spec.device, dtype=spec.dtype)
    params = spec.head_params  # recorded whole: every parameter the head read, defaults included
    spec = spec.replace(model=m.spec, params={k: v for k, v in params.items() if v != []},
                        templates=spec.templates if spec.entry.templates else None)
    from visroute.pipeline.build import build_pipeline

    pipeline = build_pipeline(spec, model=m)
    templates = load_templates(spec.templates) if not isinstance(spec.templates, (list, tuple)) else list(spec.templates)
    encode = dict(shard_size=run.shard_size, batch_size=run.batch_size, num_workers=run.workers,
                  decode=spec.decode, progress=run.progress)

    selection, sel_on_cpu = None, None
    if params.get("selection_dataset"):
        sel_ds = load_dataset(params["selection_dataset"], ds.classnames)
        sel_features = cache.encode(m, sel_ds, **encode)
        sel_idx, sel_X = sel_features.load()
        selection, sel_on_cpu = (sel_X, sel_ds.labels[sel_idx]), sel_features.decoded_on_cpu
    heads = pipeline.classifiers(list(ds.classnames), selection)

    t_feat = time.perf_counter()
    features = cache.encode(m, ds, **encode)
    feature_time = time.perf_counter() - t_feat

    k = min(5, len(ds.classnames))
    runs = [predict_features(h, features, k) for h in heads]
    indices, topk, scores = runs[0]
    y = ds.labels[indices]
    metrics = classification_metrics(y, topk, len(ds.classnames))
    confusion = metrics.pop("confusion_matrix")
    per_class = metrics.pop("per_class_accuracy")
    extra_metrics: dict = {}
    if len(runs) > 1:  # random controls: mean +- std over repeats
        per_repeat = [classification_metrics(y, r[1], len(ds.classnames)) for r in runs]
        for key in ("acc1", "acc5", "mean_per_class_recall"):
            vals = np.array([p[key] for p in per_repeat])
            metrics[key] = float(vals.mean())
            extra_metrics[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            extra_metrics[f"{key}_repeats"] = vals.tolist()
    if params.get("w_cls_sweep"):  # disclip: selection computed once
        sweep_idx, X = features.load()
        extra_metrics["w_cls_sweep"] = heads[0].sweep(X, ds.labels[sweep_idx], params["w_cls_sweep"])
    wall = time.perf_counter() - t0

    parsed = parse_model_spec(spec_text)
    head0 = heads[0]
    doc = {
        "dataset": ds.name,
        "model": parsed.location if parsed.backend == "openclip" else spec_text,
        "pretrained": parsed.pretrained,
        "task": "zeroshot_classification",
        "language": "en",
        "metrics": metrics,
        "visroute": {
            "model_spec": spec_text,
            "dataset_spec": getattr(ds, "spec", ds.name),
            "head": spec.head,
            "decode": spec.decode,
            # gpu mode: images of this run (cached features are not decoded again) decoded on the CPU, not by nvJPEG
            "decoded_on_cpu": (None if features.decoded_on_cpu is None
                               else features.decoded_on_cpu + (sel_on_cpu or 0)),
            "templates": ((list(spec.templates) if isinstance(spec.templates, (list, tuple)) else spec.templates)
                          or "default") if spec.entry.templates else None,
            "n_templates": len(templates) if spec.entry.templates else None,
            "descriptions": spec.descriptions,
            "fallback_descriptions": spec.fallback_descriptions,
            "head_params": dict(spec.params),
            "pipeline": spec.to_dict(),
            "metrics_extra": extra_metrics,
            "n_fallback_classes": getattr(head0, "n_fallback_classes_", None),
            "classnames": ds.classnames,
            "per_class_accuracy": {c: a for c, a in zip(ds.classnames, per_class)} if len(set(ds.classnames)) == len(ds.classnames)
            else list(per_class),
            "confusion_matrix": confusion.tolist() if confusion is not None and len(ds.classnames) <= 100 else None,
            "n_images": len(ds),
            "n_evaluated": int(len(indices)),
            "n_skipped": len(features.skipped),
            "skipped": [{"id": s.path, "reason": s.reason} for s in features.skipped],
            "random_weights": m.is_random,
            "wall_time_s": wall,
            "feature_time_s": feature_time,
            "seconds_per_image": features.seconds_per_image,
            "images_per_s": len(ds) / wall if wall > 0 else None,
            "feature_cache": {"key": features.key, "images_encoded": features.images_encoded,
                              "shards_reused": features.shards_reused, "n_shards": features.n_shards,
                              "shards_damaged": getattr(features, "shards_damaged", 0)},
            "predictions_file": parquet_path.name,
        },
    }
    if len(ds.classnames) > 100 and confusion is not None:
        from visroute.io import atomic_write_npy

        atomic_write_npy(json_path.with_suffix(".confusion.npy"), confusion)
        doc["visroute"]["confusion_matrix_file"] = json_path.with_suffix(".confusion.npy").name
    ids = [ds.item_id(int(i)) for i in indices]
    per_image = features.seconds_per_image or 0.0
    extra = {"cost": np.full(len(indices), pipeline.image_cost(per_image)), "latency_s": np.full(len(indices), per_image),
             **{c: [v[int(i)] for i in indices] for c, v in ds.extra.items()}}
    write_predictions_parquet(parquet_path, ids, y, ds.classnames, topk, scores, extra)
    write_json(json_path, doc)
    doc["_file"] = str(json_path)
    return doc


def _existing_result(json_path: Path) -> dict | None:
    """The result ``--skip-existing`` may keep, or None (with a warning) when it is damaged or its predictions
    Parquet is gone: such a run is measured again, never trusted and never a traceback."""
    import logging

    from visroute.safe_load import SafeLoadError, read_json

    log = logging.getLogger("visroute")
    try:
        doc = read_json(json_path, "result")
    except SafeLoadError as e:
        log.warning(f"{e}; running it again")
        return None
    if not isinstance(doc, dict):
        log.warning(f"{json_path} is not a result; running it again")
        return None
    pq_name = (doc.get("visroute") or {}).get("predictions_file")
    if pq_name and not (json_path.parent / str(pq_name)).is_file():
        log.warning(f"{json_path}: its predictions file {pq_name} is missing; running it again")
        return None
    doc["_skipped_existing"] = True
    return doc
