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
from visroute.features.cache import FeatureCache
from visroute.heads.zeroshot import ZeroShotClassifier
from visroute.models import ContrastiveModel, load_model, parse_model_spec

HEADS = ("zeroshot",)


@dataclass
class EvalOptions:
    head: str = "zeroshot"
    templates: str | None = None
    classnames: str | None = None
    output: Path = Path("results")
    batch_size: int = 64
    workers: int | None = None
    shard_size: int = 2048
    fast_decode: bool = False
    skip_existing: bool = False
    progress: bool = False
    device: str = "auto"
    dtype: str = "auto"


def make_head(name: str, model: ContrastiveModel, templates: list[str]):
    if name == "zeroshot":
        return ZeroShotClassifier(model, templates)
    raise VisrouteError(f"unknown head '{name}' (available: {', '.join(HEADS)})")


def result_paths(output: Path, dataset_name: str, model_spec: str, head: str, templates: str | None) -> tuple[Path, Path]:
    stem = result_stem(dataset_name, model_spec, head, Path(templates).name if templates else "default-templates")
    return output / f"{stem}.json", output / f"{stem}.parquet"


def evaluate(model: str | ContrastiveModel, dataset: str | ImageDataset, opts: EvalOptions | None = None,
             cache: FeatureCache | None = None) -> dict:
    """Evaluate one model on one dataset; returns the result document (also written to ``opts.output``)."""
    opts = opts or EvalOptions()
    cache = cache or FeatureCache()
    t0 = time.perf_counter()
    classnames = read_string_list(opts.classnames, "classnames", VisrouteError) if opts.classnames else None
    ds = load_dataset(dataset, classnames) if isinstance(dataset, str) else dataset
    spec_text = model.spec if isinstance(model, ContrastiveModel) else parse_model_spec(model).text
    json_path, parquet_path = result_paths(Path(opts.output), ds.name, spec_text, opts.head, opts.templates)
    if opts.skip_existing and json_path.is_file():
        import json

        doc = json.loads(json_path.read_text())
        doc["_skipped_existing"] = True
        return doc
    templates = load_templates(opts.templates)
    m = model if isinstance(model, ContrastiveModel) else load_model(model, device=opts.device, dtype=opts.dtype)
    head = make_head(opts.head, m, templates).fit(ds.classnames)

    t_feat = time.perf_counter()
    draft = 224 if opts.fast_decode else None
    features = cache.encode(m, ds, shard_size=opts.shard_size, batch_size=opts.batch_size,
                            num_workers=opts.workers, draft_size=draft, progress=opts.progress)
    feature_time = time.perf_counter() - t_feat

    k = min(5, len(ds.classnames))
    idx_parts, top_parts, score_parts = [], [], []
    for indices, emb in features.iter_shards():
        if len(indices) == 0:
            continue
        top, scores = head.predict_topk(emb, k)
        idx_parts.append(indices)
        top_parts.append(top)
        score_parts.append(scores)
    indices = np.concatenate(idx_parts) if idx_parts else np.empty(0, np.int64)
    topk = np.concatenate(top_parts) if top_parts else np.empty((0, k), np.int64)
    scores = np.concatenate(score_parts) if score_parts else np.empty((0, k), np.float32)
    y = ds.labels[indices]
    metrics = classification_metrics(y, topk, len(ds.classnames))
    confusion = metrics.pop("confusion_matrix")
    per_class = metrics.pop("per_class_accuracy")
    wall = time.perf_counter() - t0

    parsed = parse_model_spec(spec_text)
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
            "head": opts.head,
            "templates": opts.templates or "default",
            "n_templates": len(templates),
            "classnames": ds.classnames,
            "per_class_accuracy": {c: a for c, a in zip(ds.classnames, per_class)} if len(set(ds.classnames)) == len(ds.classnames)
            else list(per_class),
            "confusion_matrix": confusion.tolist() if len(ds.classnames) <= 100 else None,
            "n_images": len(ds),
            "n_evaluated": int(len(indices)),
            "n_skipped": len(features.skipped),
            "skipped": [{"id": s.path, "reason": s.reason} for s in features.skipped],
            "random_weights": m.is_random,
            "wall_time_s": wall,
            "feature_time_s": feature_time,
            "images_per_s": len(ds) / wall if wall > 0 else None,
            "feature_cache": {"key": features.key, "images_encoded": features.images_encoded,
                              "shards_reused": features.shards_reused, "n_shards": features.n_shards},
            "predictions_file": parquet_path.name,
        },
    }
    if len(ds.classnames) > 100:
        np.save(json_path.with_suffix(".confusion.npy"), confusion)
        doc["visroute"]["confusion_matrix_file"] = json_path.with_suffix(".confusion.npy").name
    ids = [ds.item_id(int(i)) for i in indices]
    extra = {c: [v[int(i)] for i in indices] for c, v in ds.extra.items()}
    write_predictions_parquet(parquet_path, ids, y, ds.classnames, topk, scores, extra)
    write_json(json_path, doc)
    doc["_file"] = str(json_path)
    return doc
