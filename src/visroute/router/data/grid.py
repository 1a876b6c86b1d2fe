"""Benchmark grid: pipeline specs x datasets x prompt variants -> results -> routing records.

GRID.yaml::

    output: runs/grid                 # results/, records/ and records.parquet go here
    limit: 200                        # optional: at most N items per dataset, evenly spread
    prices: prices.json               # optional price table (see visroute.tasks.costs), copied into every spec
    max_tokens: 32                    # defaults for every model entry (an entry's own value wins)
    device: cpu
    datasets:
      - ../shared/data/cifar10-test            # a classification dataset spec (options = class names)
      - {spec: tasks.jsonl, name: sqa}         # a multiple-choice task file (image optional: text-only tasks)
    models:                                    # each a routable pipeline spec (visroute.pipeline.PipelineSpec) + name
      - {name: clip, head: zeroshot, model: hf:openai/clip-vit-base-patch32}
      - {name: llava, head: vlm, vlm: "openai-compatible:http://127.0.0.1:8000/v1#llava"}
      - {name: llava+llama, head: vlm+llm, vlm: ..., llm: ..., reason_prompt: my-reason.txt}
    prompts: [mcq, mcq-text]                   # question-prompt variants for `vlm` entries (an entry may set `prompts`)
    options_top_k: 10                          # optional CLIP pre-filter of class options (needs prefilter:)
    prefilter: hf:openai/clip-vit-base-patch32

Each cell is one exact pipeline spec; its records carry that spec, so `route` rebuilds the same pipeline.
Every cell writes its result first and its records second; a re-run skips cells whose records exist, and the
feature and response caches make repeated work free, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError
from visroute.pipeline.spec import PipelineSpec

GRID_KEYS = ("output", "limit", "prices", "max_tokens", "device", "dtype", "datasets", "models", "prompts",
             "options_top_k", "prefilter", "engine")
_PATH_KEYS = ("model", "vlm", "llm", "descriptions", "fallback_descriptions", "templates", "prompt", "describe_prompt",
              "reason_prompt")


@dataclass
class GridCell:
    spec: PipelineSpec        # the exact pipeline this cell measures (its name is the routable model name)
    variant: str              # prompt variant label ("*" when the pipeline reads no question-prompt variant)


@dataclass
class GridSpec:
    output: Path
    datasets: list[dict]
    models: list[PipelineSpec]
    prompts: dict[str, list[str]] = field(default_factory=dict)   # model name -> prompt variants (vlm entries)
    limit: int | None = None
    options_top_k: int | None = None
    prefilter: str | None = None
    device: str = "auto"
    engine: Any = None        # `engine: ray` or {name: ray, address: ..., actors: ...} (visroute.engine.EngineOptions)

    @classmethod
    def load(cls, path: str | Path) -> "GridSpec":
        from visroute.safe_load import read_yaml

        path = Path(path)
        raw = read_yaml(path, "grid file")
        if not isinstance(raw, dict) or not raw.get("datasets") or not raw.get("models"):
            raise VisrouteError(f"{path}: a grid needs 'datasets' and 'models' lists")
        for key in ("datasets", "models"):
            if not isinstance(raw[key], list):
                raise VisrouteError(f"{path}: '{key}' must be a list, found {type(raw[key]).__name__}")
        bad = next((i for i, d in enumerate(raw["datasets"]) if not isinstance(d, str)
                    and not (isinstance(d, dict) and isinstance(d.get("spec"), str))), None)
        if bad is not None:
            raise VisrouteError(f"{path}: datasets[{bad}] must be a dataset spec string or a mapping with a 'spec' "
                                f"string, found {raw['datasets'][bad]!r:.80}")
        from visroute.registry import nearest_key

        for k in raw:
            if k not in GRID_KEYS:
                raise VisrouteError(f"{path}: unknown key '{k}'{nearest_key(str(k), GRID_KEYS)} (valid: {', '.join(GRID_KEYS)})")
        limit, top_k = _positive_int(raw, "limit", path), _positive_int(raw, "options_top_k", path)
        if "prompts" in raw and not (isinstance(raw["prompts"], list) and all(isinstance(p, str) for p in raw["prompts"])):
            raise VisrouteError(f"{path}: 'prompts' must be a list of prompt names or files, found {raw['prompts']!r:.60}")
        for i, d in enumerate(raw["datasets"]):
            extra = sorted(set(d) - {"spec", "name"}) if isinstance(d, dict) else []
            if extra:  # a misspelled key would be ignored silently
                raise VisrouteError(f"{path}: datasets[{i}] has unknown key(s) {extra} (valid: spec, name)")
        base = path.parent
        rel = lambda p: str((base / p).resolve()) if isinstance(p, str) and p and not Path(p).is_absolute() \
            and (base / p).exists() else p  # noqa: E731
        datasets = [d if isinstance(d, dict) else {"spec": d} for d in raw["datasets"]]
        for d in datasets:
            d["spec"] = rel(d["spec"])
        prices = _read_prices(rel(raw.get("prices")), path)
        defaults = {k: raw[k] for k in ("max_tokens", "device", "dtype") if k in raw}
        if prices is not None:
            defaults["prices"] = prices
        models, prompts = [], {}
        for i, m in enumerate(raw["models"]):
            if not isinstance(m, dict) or "name" not in m or "head" not in m:
                raise VisrouteError(f"{path}: each model needs 'name' and 'head': {m!r}")
            m = dict(m)
            variants = m.pop("prompts", None)
            if variants is not None and not (isinstance(variants, list) and all(isinstance(p, str) for p in variants)):
                raise VisrouteError(f"{path}: models[{i}] 'prompts' must be a list of prompt names or files")
            if m.get("prices") is not None:
                m["prices"] = _read_prices(rel(m["prices"]), path)
            entry = {**defaults, **{k: rel(v) if k in _PATH_KEYS else v for k, v in m.items()}}
            spec = PipelineSpec.from_dict(entry, f"{path} models[{i}] ({m['name']})")
            models.append(spec)
            if spec.head == "vlm":
                prompts[spec.name] = [rel(p) for p in (variants or raw.get("prompts") or [spec.prompt])]
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise VisrouteError(f"{path}: model names must be unique ({names})")
        if not isinstance(raw.get("output", ""), str):
            raise VisrouteError(f"{path}: 'output' must be a folder path")
        out = Path(raw.get("output", "runs/grid"))
        out = out if out.is_absolute() else base / out
        if out.exists() and not out.is_dir():
            raise VisrouteError(f"{path}: output {out} exists and is not a folder")
        return cls(out, datasets, models, prompts, limit, top_k, raw.get("prefilter"), raw.get("device", "auto"), raw.get("engine"))

    def cells(self) -> list[GridCell]:
        """Every (pipeline spec, prompt variant) the grid measures, in order."""
        out = []
        for spec in self.models:
            if spec.head == "vlm":
                out += [GridCell(spec.replace(prompt=p), Path(p).stem if Path(p).is_file() else p)
                        for p in self.prompts[spec.name]]
            else:
                out.append(GridCell(spec, "*"))
        return out


def _positive_int(raw: dict, key: str, path: Path) -> int | None:
    """An optional count >= 1 (``limit: 0`` would silently mean no limit; a string or -1 must not pass)."""
    v = raw.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise VisrouteError(f"{path}: '{key}' must be a whole number >= 1 (leave it out for no limit), found {v!r:.40}")
    return v


def _read_prices(path, where: Path) -> dict | None:
    """A price table given inline (a mapping) or as a JSON file path."""
    if path is None or isinstance(path, dict):
        return path
    if not isinstance(path, str):
        raise VisrouteError(f"{where}: 'prices' must be a price table (mapping) or a JSON file path, "
                            f"found {type(path).__name__}")
    from visroute.safe_load import read_json

    table = read_json(path, f"{where}: price table")
    if not isinstance(table, dict):
        raise VisrouteError(f"{where}: price table {path} must be a JSON object")
    return table


def is_task_file(spec: str) -> bool:
    base = spec.partition("#")[0]
    if base.startswith("hf:"):
        return False
    if not base.endswith((".jsonl", ".csv")):
        return False
    with open(base, encoding="utf-8-sig") as f:
        return "question" in f.readline()


@dataclass
class CellJob:
    """One cell still to run: what ``run_contrastive_cell`` / ``run_task_cell`` need and where its files go.

    The pipeline travels as canonical JSON, so an engine's worker rebuilds it with ``build_pipeline``."""

    cell_id: str
    spec_json: str
    variant: str
    ds_name: str
    dataset_spec: str
    res_dir: Path
    rec_path: Path
    dataset: Any = None               # the image dataset of a contrastive cell
    tasks: list | None = None         # the tasks of a VLM / LLM / clip-options cell
    skipped: list | None = None

    @property
    def spec(self) -> PipelineSpec:
        return PipelineSpec.from_json(self.spec_json, f"grid cell {self.cell_id}")

    @property
    def contrastive(self) -> bool:
        return self.dataset is not None


def plan_cells(grid: GridSpec, runtime, cache, log=print, done=lambda: None):
    """The cells not yet done (no records file), in grid order: dataset by dataset, then ``grid.cells()``;
    ``done()`` is called for each cell already done (a resumed run's progress starts there)."""
    from visroute.data.datasets import load_dataset, spread_subset
    from visroute.eval.results import slug
    from visroute.pipeline.build import load_contrastive
    from visroute.tasks.model import load_tasks, tasks_from_classification

    out = Path(grid.output)
    n_cells, k = len(grid.datasets) * len(grid.cells()), 0
    for d in grid.datasets:
        spec = d["spec"]
        task_file = is_task_file(spec)
        tasks = skipped = ds = None
        if task_file:
            tasks, skipped = load_tasks(spec, d.get("name"))
            tasks = tasks[: grid.limit] if grid.limit else tasks
            ds_name = d.get("name") or Path(spec.partition("#")[0]).stem
        else:
            ds = spread_subset(load_dataset(spec), grid.limit)
            ds.name = d.get("name") or ds.name
            ds_name = ds.name
        for cell in grid.cells():
            pipe_spec = cell.spec
            cell_id = f"{slug(ds_name)}__{slug(pipe_spec.name)}__{slug(cell.variant)}"
            rec_path = out / "records" / f"{cell_id}.parquet"
            k += 1
            if rec_path.is_file():
                done()
                continue
            log(f"grid: cell {k}/{n_cells}: {pipe_spec.name} on {ds_name} ({cell.variant})")
            job = CellJob(cell_id, pipe_spec.to_json(), cell.variant, ds_name, spec, out / "results" / cell_id, rec_path)
            if pipe_spec.entry.kind == "classify" and not task_file:
                job.dataset = ds
            else:
                top = None
                if not task_file and grid.options_top_k and pipe_spec.entry.family == "generative":
                    if not grid.prefilter:
                        raise VisrouteError("options_top_k needs a 'prefilter' contrastive model in the grid")
                    top = _prefilter(load_contrastive(PipelineSpec(model=grid.prefilter, device=grid.device), runtime),
                                     ds, grid.options_top_k, cache)
                job.tasks, job.skipped = (tasks if task_file else tasks_from_classification(ds, top)), skipped
            yield job


def run_contrastive_cell(job: CellJob, runtime, cache, progress: bool = True) -> dict:
    from visroute.eval.run import RunOptions, evaluate
    from visroute.pipeline.build import load_contrastive

    spec = job.spec
    return evaluate(spec, job.dataset, RunOptions(output=job.res_dir, progress=progress, cache=cache),
                    model=load_contrastive(spec, runtime))


def run_task_cell(job: CellJob, runtime) -> dict:
    """The cell's result document, or ``{"_failed": reason}`` when every call failed (nothing was written)."""
    from visroute.errors import CallsFailed
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.pipeline.build import build_pipeline

    try:
        return evaluate_tasks(build_pipeline(job.spec, runtime), job.tasks, job.ds_name, job.res_dir, job.variant,
                              job.skipped, dataset_spec=job.dataset_spec)
    except CallsFailed as e:
        return {"_failed": str(e)}


def run_grid(grid: GridSpec, progress: bool = True, log=print, engine=None) -> Path:
    """Run every (model, dataset, prompt) cell not yet done; return the combined records file.

    ``engine`` (``visroute.engine``, default local): where the cells run. Each
    cell's records are written as soon as it finishes, so a stopped run resumes from the cells that are done.
    A cell whose calls all failed stores nothing (it is re-measured next run); after the other cells are written,
    ``CallsFailed`` says which."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visroute.engine import default_engine
    from visroute.io import atomic_write_parquet
    from visroute.pipeline.build import Runtime
    from visroute.router.data.records import records_from_result

    out = Path(grid.output)
    (out / "records").mkdir(parents=True, exist_ok=True)
    runtime = Runtime()
    engine = engine if engine is not None else default_engine()
    cache = engine.feature_cache()
    from tqdm import tqdm

    # i/N and ETA over cells (VLM / LLM cells are the slow ones); off with progress=False or when not a terminal
    bar = tqdm(total=len(grid.datasets) * len(grid.cells()), desc="grid", unit="cell", dynamic_ncols=True,
               disable=None if progress else True)

    def say(message: str) -> None:
        with tqdm.external_write_mode():
            log(message)

    jobs = plan_cells(grid, runtime, cache, say, done=lambda: bar.update(1))
    run_c = lambda job: run_contrastive_cell(job, runtime, cache, progress)  # noqa: E731
    cells = engine.run_cells(jobs, run_c, run_task_cell, runtime)
    failed = []
    with bar:
        for job, doc in cells:
            bar.update(1)
            if "_failed" in doc:  # no records: the cell is measured again on the next run
                failed.append(job.cell_id)
                say(f"grid: cell {job.cell_id} FAILED: {doc['_failed']}")
                continue
            n_err = int(doc.get("visroute", {}).get("n_errors") or 0)
            if n_err:
                say(f"grid: cell {job.cell_id}: {n_err} of {doc['visroute'].get('n_tasks')} call(s) failed; their "
                    "records are marked as errors and left out of routing tables")
            spec = job.spec
            atomic_write_parquet(job.rec_path, records_from_result(doc["_file"], spec.name, spec, job.dataset_spec))
    parts = sorted((out / "records").glob("*.parquet"))
    if failed:
        from visroute.errors import CallsFailed

        if parts:
            atomic_write_parquet(out / "records.parquet", pa.concat_tables([pq.read_table(p) for p in parts],
                                                                           promote_options="default"))
        raise CallsFailed(f"{len(failed)} grid cell(s) failed, every call in error ({', '.join(failed[:5])}"
                          f"{', ...' if len(failed) > 5 else ''}); they stored nothing and run again next time")
    combined = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
    target = out / "records.parquet"
    atomic_write_parquet(target, combined)
    return target


def _prefilter(model, ds, k: int, cache=None) -> np.ndarray:
    from visroute.features.cache import FeatureCache
    from visroute.heads.zeroshot import ZeroShotClassifier

    idx, X = (cache or FeatureCache()).encode(model, ds).load()
    top = np.zeros((len(ds), k), dtype=np.int64)
    top[idx] = ZeroShotClassifier(model).fit(ds.classnames).predict_topk(X, k)[0]
    return top
