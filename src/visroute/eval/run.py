"""One evaluation: dataset -> cached features -> head -> metrics + result files."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
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

#: head name -> what it is (``visroute eval --head``)
HEADS = {
    "zeroshot": "class names x prompt templates (CLIP)",
    "descriptions": "class name + descriptions, mean of per-sentence scores (DCLIP; --description-style)",
    "cupl": "description sentences as prompts, embeddings averaged (CuPL)",
    "random-words": "control: same number of random-word descriptors per class (WaffleCLIP), --repeats",
    "random-chars": "control: random-character descriptors, --repeats",
    "classname-free": "descriptions without the class name, + w_cls x class-name prompt; --w-cls-sweep",
    "disclip": "discriminative selection per test image's top-k neighbourhood (needs --selection-dataset); --w-cls-sweep",
}


@dataclass
class EvalOptions:
    head: str = "zeroshot"
    templates: str | None = None
    classnames: str | None = None
    descriptions: str | None = None
    fallback_descriptions: str | None = None
    description_style: str = "dclip"
    repeats: int = 5
    seed: int = 0
    w_cls: float = 0.0
    w_cls_sweep: list[float] = field(default_factory=list)
    selection_dataset: str | None = None
    n_per_class: int | None = None
    k: int = 3
    m: int = 5
    disclip_mode: str = "classname-free"
    output: Path = Path("results")
    batch_size: int = 64
    workers: int | None = None
    shard_size: int = 2048
    decode: str = "exact"  # exact (the model's own preprocessing) | fast | gpu (visroute.data.batches)
    skip_existing: bool = False
    progress: bool = False
    device: str = "auto"
    dtype: str = "auto"
    prices: dict | None = None

    def to_spec(self, model_spec: str) -> PipelineSpec:
        """The pipeline spec these options describe for one contrastive model."""
        if self.head not in HEADS:
            raise VisrouteError(f"unknown head '{self.head}' (available: {', '.join(HEADS)})")
        p: dict = {}
        if self.head in ("descriptions", "random-words", "random-chars"):
            p["description_style"] = self.description_style
        if self.head.startswith("random"):
            p.update(repeats=self.repeats, seed=self.seed)
        if self.head in ("classname-free", "disclip"):
            p["w_cls"] = self.w_cls
        if self.head in ("classname-free", "disclip") and self.w_cls_sweep:
            p["w_cls_sweep"] = list(self.w_cls_sweep)
        if self.head == "disclip":
            p.update(k=self.k, m=self.m, n_per_class=self.n_per_class, mode=self.disclip_mode,
                     selection_dataset=self.selection_dataset)
        return PipelineSpec(head=self.head, model=model_spec, templates=self.templates if self.head == "zeroshot" else None,
                            descriptions=self.descriptions, fallback_descriptions=self.fallback_descriptions,
                            prices=self.prices, device=self.device, dtype=self.dtype, decode=self.decode, params=p)

    @classmethod
    def from_spec(cls, spec: PipelineSpec, **run) -> "EvalOptions":
        p = spec.params
        templates = list(spec.templates) if isinstance(spec.templates, tuple) else spec.templates
        return cls(head=spec.head, templates=templates, descriptions=spec.descriptions,
                   fallback_descriptions=spec.fallback_descriptions,
                   description_style=p.get("description_style", "dclip"), repeats=int(p.get("repeats", 5)),
                   seed=int(p.get("seed", 0)), w_cls=float(p.get("w_cls", 0.0)), w_cls_sweep=list(p.get("w_cls_sweep", [])),
                   selection_dataset=p.get("selection_dataset"), n_per_class=p.get("n_per_class"), k=int(p.get("k", 3)),
                   m=int(p.get("m", 5)), disclip_mode=p.get("mode", "classname-free"), device=spec.device,
                   dtype=spec.dtype, decode=spec.decode, prices=spec.prices, **run)


def make_heads(opts: EvalOptions, model: ContrastiveModel, classnames: list[str], templates: list[str] | None = None,
               selection: tuple | None = None) -> list:
    """Fitted head(s) for ``opts.head`` (see ``visroute.pipeline.heads.make_heads``)."""
    from visroute.pipeline.heads import make_heads as spec_heads

    return spec_heads(opts.to_spec(model.spec), model, classnames, selection)


def prompts_label(opts: EvalOptions) -> str:
    if opts.head == "zeroshot":
        if isinstance(opts.templates, (list, tuple)):
            return "inline-templates"
        return Path(opts.templates).name if opts.templates else "default-templates"
    return Path(opts.descriptions).name if opts.descriptions else "none"


def result_paths(output: Path, dataset_name: str, model_spec: str, opts: EvalOptions) -> tuple[Path, Path]:
    stem = result_stem(dataset_name, model_spec, opts.head, prompts_label(opts))
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


def evaluate(model: str | ContrastiveModel | PipelineSpec, dataset: str | ImageDataset, opts: EvalOptions | None = None,
             cache: FeatureCache | None = None) -> dict:
    """Evaluate one model (or pipeline spec) on one dataset; returns the result document (also written to
    ``opts.output``). A spec's head settings replace those of ``opts``; ``opts`` keeps the run settings."""
    opts = opts or EvalOptions()
    if isinstance(model, PipelineSpec):
        run = {k: getattr(opts, k) for k in ("output", "batch_size", "workers", "shard_size",
                                             "skip_existing", "progress", "classnames")}
        opts, model = EvalOptions.from_spec(model, **run), model.model
    cache = cache or FeatureCache()
    t0 = time.perf_counter()
    classnames = read_string_list(opts.classnames, "classnames", VisrouteError) if opts.classnames else None
    ds = load_dataset(dataset, classnames) if isinstance(dataset, str) else dataset
    spec_text = model.spec if isinstance(model, ContrastiveModel) else parse_model_spec(model).text
    json_path, parquet_path = result_paths(Path(opts.output), ds.name, spec_text, opts)
    json_path.parent.mkdir(parents=True, exist_ok=True)  # before any work: a bad output path fails at once
    if opts.skip_existing and json_path.is_file():
        doc = json.loads(json_path.read_text())
        doc["_skipped_existing"] = True
        return doc
    m = model if isinstance(model, ContrastiveModel) else load_model(model, device=opts.device, dtype=opts.dtype)
    spec = opts.to_spec(m.spec)
    from visroute.pipeline.build import build_pipeline

    pipeline = build_pipeline(spec, model=m)
    templates = load_templates(opts.templates) if not isinstance(opts.templates, (list, tuple)) else list(opts.templates)
    encode = dict(shard_size=opts.shard_size, batch_size=opts.batch_size, num_workers=opts.workers,
                  decode=spec.decode, progress=opts.progress)

    selection = None
    if opts.head == "disclip" and opts.selection_dataset:
        sel_ds = load_dataset(opts.selection_dataset, ds.classnames)
        sel_idx, sel_X = cache.encode(m, sel_ds, **encode).load()
        selection = (sel_X, sel_ds.labels[sel_idx])
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
    if opts.head in ("classname-free", "disclip") and opts.w_cls_sweep:  # disclip: selection computed once
        sweep_idx, X = features.load()
        extra_metrics["w_cls_sweep"] = heads[0].sweep(X, ds.labels[sweep_idx], opts.w_cls_sweep)
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
            "head": opts.head,
            "decode": spec.decode,
            "templates": ((list(opts.templates) if isinstance(opts.templates, (list, tuple)) else opts.templates)
                          or "default") if opts.head == "zeroshot" else None,
            "n_templates": len(templates) if opts.head == "zeroshot" else None,
            "descriptions": opts.descriptions,
            "fallback_descriptions": opts.fallback_descriptions,
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
