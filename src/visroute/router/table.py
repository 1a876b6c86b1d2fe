"""Routing records -> a routing table: one row per task, one column per model (success, cost).

Record schema (Parquet, one row per (task, model) outcome)::

    task_id, dataset, prompt_variant, task_text, image_id, model, correct, score, cost, latency_s[, quality]

An optional float ``quality`` column (graded outcome in [0, 1], e.g. a judge's score / 10) replaces ``correct``
as the success value wherever it is not null.

Records whose ``prompt_variant`` is "*" (models that do not read the prompt, like CLIP zero-shot) apply to
every prompt variant of the same task. Building is columnar (pyarrow + numpy factorisation), so millions of
records fit comfortably in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visroute.errors import VisrouteError

RECORD_COLUMNS = ["task_id", "dataset", "prompt_variant", "task_text", "image_id", "model", "correct", "score", "cost",
                  "latency_s"]


def read_records(paths) -> "pa.Table":  # noqa: F821
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    tables = []
    for p in paths:
        t = pq.read_table(p)
        missing = [c for c in ("task_id", "dataset", "model", "correct") if c not in t.column_names]
        if missing:
            raise VisrouteError(f"{p} is not a records file: missing column(s) {missing}")
        tables.append(t)
    if not tables:
        raise VisrouteError("no records files given")
    return pa.concat_tables(tables, promote_options="default")


@dataclass
class RoutingTable:
    """Rows = tasks (dataset, prompt variant, task id), columns = models."""

    models: list[str]
    dataset: np.ndarray          # (n,) str
    prompt: np.ndarray           # (n,) str
    task_id: np.ndarray          # (n,) str
    text: np.ndarray             # (n,) str
    image_id: np.ndarray         # (n,) str
    image_path: np.ndarray       # (n,) str (absolute path where known, for image-aware routers)
    success: np.ndarray          # (n, m) float32 in [0, 1], NaN where the model was not run
    cost: np.ndarray             # (n, m) float32, NaN where not run
    weight: np.ndarray           # (n,) number of samples a row stands for (dataset-prompt granularity)
    split: np.ndarray            # (n,) "train" | "val" | "test"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.task_id)

    def subset(self, mask: np.ndarray) -> "RoutingTable":
        f = lambda a: a[mask]  # noqa: E731
        return RoutingTable(list(self.models), f(self.dataset), f(self.prompt), f(self.task_id), f(self.text),
                            f(self.image_id), f(self.image_path), f(self.success), f(self.cost), f(self.weight),
                            f(self.split), dict(self.meta))

    def part(self, name: str) -> "RoutingTable":
        return self.subset(self.split == name)

    def model_costs(self) -> np.ndarray:
        """Mean cost per model over the rows where it ran (the router's expected cost of a call)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(np.nanmean(self.cost, axis=0), nan=0.0)

    def save(self, directory: str | Path) -> Path:
        import pyarrow as pa

        from visroute.io import atomic_write_json, atomic_write_parquet

        d = Path(directory)
        cols = {"dataset": self.dataset, "prompt_variant": self.prompt, "task_id": self.task_id, "task_text": self.text,
                "image_id": self.image_id, "image_path": self.image_path, "weight": self.weight, "split": self.split}
        for j, m in enumerate(self.models):
            cols[f"success::{m}"] = self.success[:, j]
            cols[f"cost::{m}"] = self.cost[:, j]
        atomic_write_parquet(d / "table.parquet", pa.table(cols))
        atomic_write_json(d / "table.json", {"models": self.models, **self.meta}, indent=1)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "RoutingTable":
        import pyarrow.parquet as pq

        d = Path(directory)
        if not (d / "table.parquet").is_file():
            raise VisrouteError(f"{d} holds no routing table (run `visroute route build` first)")
        meta = json.loads((d / "table.json").read_text())
        t = pq.read_table(d / "table.parquet")
        models = meta.pop("models")
        col = lambda c: t.column(c).to_numpy(zero_copy_only=False)  # noqa: E731
        success = np.stack([col(f"success::{m}") for m in models], axis=1).astype(np.float32)
        cost = np.stack([col(f"cost::{m}") for m in models], axis=1).astype(np.float32)
        return cls(models, col("dataset").astype(str), col("prompt_variant").astype(str), col("task_id").astype(str),
                   col("task_text").astype(str), col("image_id").astype(str), col("image_path").astype(str), success, cost,
                   col("weight").astype(np.float32), col("split").astype(str), meta)


def record_provenance(records) -> dict:
    """Which exact pipeline spec produced each model's records (per prompt variant), and which dataset spec each
    dataset name stands for: what a router needs to rebuild the measured pipelines and find image features."""
    names = set(records.column_names)
    out: dict = {"pipelines": {}, "dataset_specs": {}}
    if "pipeline" in names:
        pairs = records.select(["model", "prompt_variant", "pipeline"]).group_by(["model", "prompt_variant", "pipeline"])
        seen = pairs.aggregate([]).to_pylist()
        for row in seen:
            if row["pipeline"] is None:
                continue
            per = out["pipelines"].setdefault(row["model"], {})
            if row["prompt_variant"] in per and per[row["prompt_variant"]] != json.loads(row["pipeline"]):
                raise VisrouteError(f"records name two different pipelines '{row['model']}' "
                                    f"(prompt {row['prompt_variant']}); give each pipeline its own model name")
            per[row["prompt_variant"]] = json.loads(row["pipeline"])
    if "dataset_spec" in names:
        for row in records.select(["dataset", "dataset_spec"]).group_by(["dataset", "dataset_spec"]).aggregate([]).to_pylist():
            if row["dataset_spec"] is None:
                continue
            prev = out["dataset_specs"].setdefault(row["dataset"], row["dataset_spec"])
            if prev != row["dataset_spec"]:
                raise VisrouteError(f"dataset name '{row['dataset']}' stands for two datasets ({prev}, "
                                    f"{row['dataset_spec']}); give them different names")
    return out


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), uniques


def build_table(records, granularity: str = "sample", split_by: str = "dataset", holdout: list[str] | None = None,
                val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> RoutingTable:
    """Aggregate records (a pyarrow Table) into a routing table and assign train/val/test splits.

    ``granularity``: "sample" (one row per task) or "dataset-prompt" (one row per dataset x prompt variant,
    success = mean accuracy). ``split_by``: "dataset" (whole datasets held out: generalisation to unseen
    datasets; ``holdout`` names the test datasets, else a seeded choice) or "sample" (random rows).
    """
    if granularity not in ("sample", "dataset-prompt"):
        raise VisrouteError("granularity must be 'sample' or 'dataset-prompt'")
    cols = {c: records.column(c).to_numpy(zero_copy_only=False) for c in records.column_names}
    n = len(cols["task_id"])
    get = lambda c, default: cols[c] if c in cols else np.full(n, default, dtype=object)  # noqa: E731
    dataset = get("dataset", "").astype(str)
    prompt = get("prompt_variant", "*").astype(str)
    task = get("task_id", "").astype(str)
    model = cols["model"].astype(str)
    correct = np.asarray(cols["correct"], dtype=np.float32)
    if "quality" in cols:  # graded outcomes in [0, 1] (e.g. judge scores) where given; `correct` elsewhere
        quality = np.asarray(cols["quality"], dtype=np.float32)
        correct = np.where(np.isnan(quality), correct, quality)
    cost = np.nan_to_num(np.asarray(get("cost", 0.0), dtype=np.float32), nan=0.0)
    text = get("task_text", "").astype(str)
    image = get("image_id", "").astype(str)
    image_path = get("image_path", "").astype(str)

    # broadcast prompt-agnostic records ("*") to every prompt variant seen for the same dataset
    star = prompt == "*"
    if star.any() and (~star).any():
        variants: dict[str, list[str]] = {}
        for ds, pv in set(zip(dataset[~star], prompt[~star])):
            variants.setdefault(ds, []).append(pv)
        reps = np.array([len(variants.get(ds, ["*"])) for ds in dataset[star]])
        idx_star = np.repeat(np.flatnonzero(star), reps)
        new_prompt = np.concatenate([sorted(variants.get(ds, ["*"])) for ds in dataset[star]]).astype(str)
        keep = np.flatnonzero(~star)
        sel = np.concatenate([keep, idx_star])
        dataset, task, model, correct, cost, text, image, image_path = (
            a[sel] for a in (dataset, task, model, correct, cost, text, image, image_path))
        prompt = np.concatenate([prompt[keep], new_prompt])

    if granularity == "sample":
        key = np.char.add(np.char.add(np.char.add(dataset.astype(str), "\x1f"), np.char.add(prompt, "\x1f")), task)
    else:
        key = np.char.add(np.char.add(dataset.astype(str), "\x1f"), prompt)
    row, keys = _factorize(key)
    col, models = _factorize(model)
    R, M = len(keys), len(models)
    sums = np.zeros((R, M), np.float64)
    counts = np.zeros((R, M), np.float64)
    csum = np.zeros((R, M), np.float64)
    np.add.at(sums, (row, col), correct)
    np.add.at(counts, (row, col), 1.0)
    np.add.at(csum, (row, col), cost)
    with np.errstate(invalid="ignore", divide="ignore"):
        success = np.where(counts > 0, sums / counts, np.nan).astype(np.float32)
        mean_cost = np.where(counts > 0, csum / counts, np.nan).astype(np.float32)
    first = np.full(R, -1, np.int64)
    order = np.argsort(row, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(row[order])) + 1]
    first[row[order][starts]] = order[starts]
    # prefer a non-empty task text for the row
    r_text = text[first]
    weight = counts.max(axis=1).astype(np.float32)
    r_dataset, r_prompt = dataset[first], prompt[first]
    r_task = task[first] if granularity == "sample" else np.full(R, "*")
    r_image = image[first] if granularity == "sample" else np.full(R, "")
    r_image_path = image_path[first] if granularity == "sample" else np.full(R, "")

    rng = np.random.default_rng(seed)
    split = np.full(R, "train", dtype=object)
    if split_by == "dataset":
        names = sorted(set(r_dataset))
        if holdout:
            unknown = sorted(set(holdout) - set(names))
            if unknown:
                raise VisrouteError(f"holdout dataset(s) {unknown} not in the records ({names})")
            test_sets = list(holdout)
        else:
            k = max(1, int(round(test_fraction * len(names)))) if len(names) > 1 else 0
            test_sets = list(rng.choice(names, size=k, replace=False)) if k else []
        split[np.isin(r_dataset, test_sets)] = "test"
        rest = np.flatnonzero(split == "train")
        val = rng.choice(rest, size=int(round(val_fraction * len(rest))), replace=False) if len(rest) else []
        split[val] = "val"
    elif split_by == "sample":
        u = rng.random(R)
        split[u < test_fraction] = "test"
        split[(u >= test_fraction) & (u < test_fraction + val_fraction)] = "val"
    else:
        raise VisrouteError("split_by must be 'dataset' or 'sample'")
    meta = {"granularity": granularity, "split_by": split_by, "holdout": holdout, "seed": seed, "n_records": int(n),
            "val_fraction": val_fraction, "test_fraction": test_fraction, **record_provenance(records)}
    return RoutingTable(list(models.astype(str)), r_dataset, r_prompt, r_task, r_text, r_image, r_image_path, success,
                        mean_cost, weight, split.astype(str), meta)
