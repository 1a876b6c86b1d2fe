"""Benchmark grid: models x datasets x prompt variants -> results -> routing records.

GRID.yaml::

    output: runs/grid                 # results/, records/ and records.parquet go here
    limit: 200                        # optional: at most N items per dataset, evenly spread
    prices: prices.json               # optional price table (see visroute.tasks.costs)
    datasets:
      - ../shared/data/cifar10-test            # a classification dataset spec (options = class names)
      - {spec: tasks.jsonl, name: sqa}         # a multiple-choice task file
    models:                                    # each a routable "model": a head plus the specs it needs
      - {name: clip, head: zeroshot, model: hf:openai/clip-vit-base-patch32}
      - {name: llava, head: vlm, vlm: "openai-compatible:http://127.0.0.1:8000/v1#llava"}
      - {name: llava+llama, head: vlm+llm, vlm: ..., llm: ...}
    prompts: [mcq, mcq-text]                   # prompt variants for the generative heads
    options_top_k: 10                          # optional CLIP pre-filter of class options (needs prefilter:)
    prefilter: hf:openai/clip-vit-base-patch32

Every run writes its result first and its records second; a re-run skips runs whose records exist, and the
feature and response caches make repeated work free, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError

CLIP_HEADS = ("zeroshot", "descriptions", "cupl", "classname-free")
GEN_HEADS = ("vlm", "vlm+llm")


@dataclass
class GridSpec:
    output: Path
    datasets: list[dict]
    models: list[dict]
    prompts: list[str] = field(default_factory=lambda: ["mcq"])
    limit: int | None = None
    prices: str | None = None
    options_top_k: int | None = None
    prefilter: str | None = None
    max_tokens: int = 32
    device: str = "auto"

    @classmethod
    def load(cls, path: str | Path) -> "GridSpec":
        import yaml

        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise VisrouteError(f"cannot read grid file {path}: {e}") from None
        if not isinstance(raw, dict) or not raw.get("datasets") or not raw.get("models"):
            raise VisrouteError(f"{path}: a grid needs 'datasets' and 'models' lists")
        base = path.parent
        rel = lambda p: str((base / p).resolve()) if p and not Path(p).is_absolute() and (base / p).exists() else p  # noqa: E731
        datasets = [d if isinstance(d, dict) else {"spec": d} for d in raw["datasets"]]
        for d in datasets:
            d["spec"] = rel(d["spec"])
        models = []
        for m in raw["models"]:
            if not isinstance(m, dict) or "name" not in m or "head" not in m:
                raise VisrouteError(f"{path}: each model needs 'name' and 'head': {m!r}")
            for k in ("model", "vlm", "llm", "descriptions"):
                if k in m and isinstance(m[k], str) and not m[k].startswith(("hf:", "openclip:", "openai-compatible:", "random-tiny")):
                    m[k] = rel(m[k])
            models.append(m)
        names = [m["name"] for m in models]
        if len(set(names)) != len(names):
            raise VisrouteError(f"{path}: model names must be unique ({names})")
        out = Path(raw.get("output", "runs/grid"))
        return cls(out if out.is_absolute() else base / out, datasets, models, list(raw.get("prompts") or ["mcq"]),
                   raw.get("limit"), rel(raw.get("prices")), raw.get("options_top_k"), raw.get("prefilter"),
                   int(raw.get("max_tokens", 32)), raw.get("device", "auto"))


def _is_task_file(spec: str) -> bool:
    base = spec.partition("#")[0]
    if not base.endswith((".jsonl", ".csv")):
        return False
    with open(base, encoding="utf-8-sig") as f:
        return "question" in f.readline()


def run_grid(grid: GridSpec, progress: bool = True, log=print) -> Path:
    """Run every (model, dataset, prompt) cell not yet done; return the combined records file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visroute.data.datasets import load_dataset, spread_subset
    from visroute.eval.results import slug
    from visroute.eval.run import EvalOptions, evaluate
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.heads.vlm import CLIPOptionsPipeline, VLMDirectPipeline, VLMThenLLMPipeline
    from visroute.llm import ResponseCache, load_generator
    from visroute.models import load_model
    from visroute.router.records import records_from_result
    from visroute.tasks.costs import PriceTable
    from visroute.tasks.model import load_tasks, tasks_from_classification

    out = Path(grid.output)
    (out / "records").mkdir(parents=True, exist_ok=True)
    prices = PriceTable.load(grid.prices)
    cache = ResponseCache()
    loaded: dict[str, Any] = {}

    def clip(spec):
        if spec not in loaded:
            loaded[spec] = load_model(spec, device=grid.device)
        return loaded[spec]

    def gen(spec):
        key = "gen:" + spec
        if key not in loaded:
            loaded[key] = load_generator(spec, cache=cache, max_tokens=grid.max_tokens, device=grid.device)
        return loaded[key]

    for d in grid.datasets:
        spec = d["spec"]
        task_file = _is_task_file(spec)
        tasks = skipped = ds = None
        if task_file:
            tasks, skipped = load_tasks(spec, d.get("name"))
            if grid.limit:
                tasks = tasks[: grid.limit]
            ds_name = d.get("name") or Path(spec.partition("#")[0]).stem
        else:
            ds = spread_subset(load_dataset(spec), grid.limit)
            if d.get("name"):
                ds.name = d["name"]
            ds_name = ds.name
        for m in grid.models:
            head = m["head"]
            variants = grid.prompts if head in GEN_HEADS else ["*"]
            for prompt in variants:
                cell = f"{slug(ds_name)}__{slug(m['name'])}__{slug(prompt)}"
                rec_path = out / "records" / f"{cell}.parquet"
                if rec_path.is_file():
                    continue
                log(f"grid: {m['name']} on {ds_name} ({prompt})")
                res_dir = out / "results" / cell
                if head in CLIP_HEADS and not task_file:
                    doc = evaluate(clip(m["model"]), ds, EvalOptions(head=head, output=res_dir, templates=m.get("templates"),
                                                                     descriptions=m.get("descriptions"), progress=progress))
                    rate = prices.price(m["model"]).per_second
                    records = records_from_result(doc["_file"], m["name"], rate)
                else:
                    if task_file:
                        cell_tasks = tasks
                    else:
                        top = None
                        if grid.options_top_k and head in GEN_HEADS:
                            if not grid.prefilter:
                                raise VisrouteError("options_top_k needs a 'prefilter' contrastive model in the grid")
                            top = _prefilter(clip(grid.prefilter), ds, grid.options_top_k)
                        cell_tasks = tasks_from_classification(ds, top)
                    if head in CLIP_HEADS or head == "clip-options":
                        pipe = CLIPOptionsPipeline(clip(m["model"]), prices=prices)
                    elif head == "vlm":
                        pipe = VLMDirectPipeline(gen(m["vlm"]), prompt, prices)
                    elif head == "vlm+llm":
                        pipe = VLMThenLLMPipeline(gen(m["vlm"]), gen(m["llm"]), prices=prices,
                                                  **({"reason_prompt": m["reason_prompt"]} if "reason_prompt" in m else {}))
                    else:
                        raise VisrouteError(f"grid model {m['name']}: unknown head '{head}'")
                    doc = evaluate_tasks(pipe, cell_tasks, ds_name, res_dir, prompt, skipped)
                    records = records_from_result(doc["_file"], m["name"])
                tmp = rec_path.with_name(f".tmp-{rec_path.name}")
                pq.write_table(records, tmp)
                tmp.replace(rec_path)
    parts = sorted((out / "records").glob("*.parquet"))
    combined = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
    target = out / "records.parquet"
    pq.write_table(combined, target.with_name(".tmp-records.parquet"))
    target.with_name(".tmp-records.parquet").replace(target)
    return target


def _prefilter(model, ds, k: int) -> np.ndarray:
    from visroute.features.cache import FeatureCache
    from visroute.heads.zeroshot import ZeroShotClassifier

    idx, X = FeatureCache().encode(model, ds).load()
    top = np.zeros((len(ds), k), dtype=np.int64)
    top[idx] = ZeroShotClassifier(model).fit(ds.classnames).predict_topk(X, k)[0]
    return top
