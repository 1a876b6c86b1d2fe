"""Routing records -> a routing table: one row per task, one column per model (success, cost).

Record schema (Parquet, one row per (task, model) outcome)::

    task_id, dataset, prompt_variant, task_text, image_id, model, correct, score, cost, latency_s[, quality]

An optional float ``quality`` column (graded outcome in [0, 1], e.g. a judge's score / 10) replaces ``correct``
as the success value wherever it is not null.

Records whose ``prompt_variant`` is "*" (models that do not read the prompt, like CLIP zero-shot) apply to
every prompt variant of the same task. Building is columnar (Arrow hashing to integer codes, numpy bincounts), so
millions of records take memory in proportion to the distinct strings, not the records.
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
        # strings as dictionaries: a task text shared by thousands of records is held once (memory follows the
        # distinct values; to_pylist/to_numpy still give plain strings)
        try:
            strings = [f.name for f in pq.read_schema(p)
                       if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            t = pq.read_table(p, read_dictionary=strings)
        except FileNotFoundError:
            raise VisrouteError(f"records file {p} not found (write one with `visroute grid run GRID.yaml`)") from None
        except (OSError, pa.ArrowException) as e:
            raise VisrouteError(f"{p} is not a readable records file (Parquet): {' '.join(str(e).split())[:160]}") from None
        missing = [c for c in ("task_id", "dataset", "model", "correct") if c not in t.column_names]
        if missing:
            raise VisrouteError(f"{p} is not a records file: missing column(s) {missing}")
        tables.append(t)
    if not tables:
        raise VisrouteError("no records files given")
    return pa.concat_tables(tables, promote_options="permissive")


def failed_mask(records) -> np.ndarray:
    """Records of failed calls (``status`` other than "ok"; older records without the column: none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "status" not in records.column_names:
        return np.zeros(records.num_rows, bool)
    col = records.column("status")
    col = col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
    ok = pc.fill_null(pc.equal(col.cast(pa.string()), "ok"), True)
    return ~ok.to_numpy(zero_copy_only=False).astype(bool)


def check_record_values(records) -> None:
    """Range checks at the boundary: cost finite and >= 0 (NaN or null: no price, counted as 0), correct in {0, 1},
    quality in [0, 1] (nulls allowed)."""
    import pyarrow as pa

    checks = (("cost", lambda v: np.isnan(v) | (np.isfinite(v) & (v >= 0)), "finite and >= 0 (NaN: not priced)"),
              ("correct", lambda v: (v == 0) | (v == 1), "0/1 (false/true)"),
              ("quality", lambda v: (v >= 0) & (v <= 1), "in [0, 1]"))
    for name, good, what in checks:
        if name not in records.column_names:
            continue
        col = records.column(name)
        if pa.types.is_boolean(col.type):
            continue
        try:
            arr = col.cast(pa.float64())
        except pa.ArrowException:
            raise VisrouteError(f"records column '{name}' holds {col.type} values; it must be numeric") from None
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
        v = arr.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(valid & ~good(np.nan_to_num(v, nan=-np.inf) if name != "cost" else v))
        if len(bad):
            raise VisrouteError(f"records: {len(bad)} value(s) of '{name}' are not {what} (first: row {int(bad[0])}, "
                                f"{v[bad[0]]!r}); fix or drop those records")


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
    score: np.ndarray | None = None  # (n, m) the model's own confidence (record ``score``), NaN where none
    answer: np.ndarray | None = None  # (n, m) str: the model's answer key (record ``answer``), "" where none

    def __post_init__(self):
        if self.score is None:
            self.score = np.full(self.success.shape, np.nan, np.float32)
        if self.answer is None:
            self.answer = np.full(self.success.shape, "", dtype=object)

    def __len__(self) -> int:
        return len(self.task_id)

    def subset(self, mask: np.ndarray) -> "RoutingTable":
        f = lambda a: a[mask]  # noqa: E731
        return RoutingTable(list(self.models), f(self.dataset), f(self.prompt), f(self.task_id), f(self.text),
                            f(self.image_id), f(self.image_path), f(self.success), f(self.cost), f(self.weight),
                            f(self.split), dict(self.meta), f(self.score), f(self.answer))

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
            if np.isfinite(self.score[:, j]).any():
                cols[f"score::{m}"] = self.score[:, j]
            if (self.answer[:, j] != "").any():
                cols[f"answer::{m}"] = self.answer[:, j].astype(str)
        atomic_write_parquet(d / "table.parquet", pa.table(cols))
        atomic_write_json(d / "table.json", {"models": self.models, **self.meta}, indent=1)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "RoutingTable":
        import pyarrow.parquet as pq

        d = Path(directory)
        if not (d / "table.parquet").is_file():
            raise VisrouteError(f"{d} holds no routing table (run `visroute route build` first)")
        from visroute.safe_load import read_json

        meta = read_json(d / "table.json", "routing table")
        if not isinstance(meta, dict) or not isinstance(meta.get("models"), list):
            raise VisrouteError(f"{d / 'table.json'}: not a routing table description (no 'models' list)")
        t = pq.read_table(d / "table.parquet")
        models = meta.pop("models")
        col = lambda c: t.column(c).to_numpy(zero_copy_only=False)  # noqa: E731
        success = np.stack([col(f"success::{m}") for m in models], axis=1).astype(np.float32)
        cost = np.stack([col(f"cost::{m}") for m in models], axis=1).astype(np.float32)
        names = set(t.column_names)
        score = np.stack([col(f"score::{m}") if f"score::{m}" in names else np.full(len(t), np.nan)
                          for m in models], axis=1).astype(np.float32)
        answer = np.stack([col(f"answer::{m}").astype(str) if f"answer::{m}" in names else np.full(len(t), "")
                           for m in models], axis=1).astype(object) if models else None
        return cls(models, col("dataset").astype(str), col("prompt_variant").astype(str), col("task_id").astype(str),
                   col("task_text").astype(str), col("image_id").astype(str), col("image_path").astype(str), success, cost,
                   col("weight").astype(np.float32), col("split").astype(str), meta, score, answer)


def record_provenance(records) -> dict:
    """Which exact pipeline spec produced each model's records (per prompt variant), and which dataset spec each
    dataset name stands for: what a router needs to rebuild the measured pipelines and find image features."""
    names = set(records.column_names)
    out: dict = {"pipelines": {}, "dataset_specs": {}}
    if "pipeline" in names:
        pairs = records.select(["model", "prompt_variant", "pipeline"]).unify_dictionaries().group_by(
            ["model", "prompt_variant", "pipeline"])
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
        for row in records.select(["dataset", "dataset_spec"]).unify_dictionaries().group_by(
                ["dataset", "dataset_spec"]).aggregate([]).to_pylist():
            if row["dataset_spec"] is None:
                continue
            prev = out["dataset_specs"].setdefault(row["dataset"], row["dataset_spec"])
            if prev != row["dataset_spec"]:
                raise VisrouteError(f"dataset name '{row['dataset']}' stands for two datasets ({prev}, "
                                    f"{row['dataset_spec']}); give them different names")
    return out


def _codes(records, name: str, default: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of a column's values (as strings) whose order is the values' sorted order, and those values:
    strings stay in Arrow until the few the table keeps are taken, so memory follows the distinct values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in records.column_names:
        return np.zeros(records.num_rows, np.int32), np.array([default])
    col = records.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    col = col.cast(pa.string())
    col = pc.fill_null(col, "None") if col.null_count else col
    values = pa.array(sorted(pc.unique(col).to_pylist()), pa.string())
    return pc.index_in(col, value_set=values).to_numpy(zero_copy_only=False).astype(np.int32), values


def _floats(records, name: str, default: float) -> np.ndarray:
    import pyarrow as pa

    if name not in records.column_names:
        return np.full(records.num_rows, default, np.float32)
    return records.column(name).cast(pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)


def _broadcast_star(d: np.ndarray, p: np.ndarray, star_code: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Record positions after prompt-agnostic ("*") records are repeated once per prompt variant seen for their
    dataset (non-star records first, then each star record's copies in variant order), and the new prompt codes."""
    star = p == star_code if star_code is not None else np.zeros(len(p), bool)
    keep = np.flatnonzero(~star)
    if not star.any() or not len(keep):
        return np.arange(len(p)), p
    n_p = int(p.max()) + 1
    pairs = np.unique(d[keep].astype(np.int64) * n_p + p[keep])  # sorted: by dataset, then variant (sorted order)
    pd, pp = pairs // n_p, (pairs % n_p).astype(p.dtype)
    n_d = int(d.max()) + 1
    count = np.bincount(pd, minlength=n_d)
    start = np.r_[0, np.cumsum(count)[:-1]]
    idx_star = np.flatnonzero(star)
    ds = d[idx_star]
    reps = np.maximum(count[ds], 1)
    rep_idx = np.repeat(idx_star, reps)
    offset = np.arange(len(rep_idx)) - np.repeat(np.cumsum(reps) - reps, reps)
    has = np.repeat(count[ds] > 0, reps)
    new_p = np.where(has, pp[np.minimum(np.repeat(start[ds], reps) + offset, max(len(pp) - 1, 0))], star_code)
    return np.concatenate([keep, rep_idx]), np.concatenate([p[keep], new_p.astype(p.dtype)])


def _row_keys(parts: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Row of each record for the given code columns (rows in the sorted order of the code tuples), and the count."""
    sizes = [int(a.max()) + 1 if len(a) else 1 for a in parts]
    if float(np.prod([float(x) for x in sizes])) < 2.0 ** 62:
        key = np.zeros(len(parts[0]), np.int64)
        for a, size in zip(parts, sizes):
            key = key * size + a
        _, row = np.unique(key, return_inverse=True)
    else:
        _, row = np.unique(np.stack(parts, axis=1), axis=0, return_inverse=True)
    row = row.reshape(-1)
    return row, int(row.max()) + 1 if len(row) else 0


def build_table(records, granularity: str = "sample", split_by: str = "dataset", holdout: list[str] | None = None,
                val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> RoutingTable:
    """Aggregate records (a pyarrow Table) into a routing table and assign train/val/test splits.

    ``granularity``: "sample" (one row per task) or "dataset-prompt" (one row per dataset x prompt variant,
    success = mean accuracy). ``split_by``: "dataset" (whole datasets held out: generalisation to unseen
    datasets; ``holdout`` names the test datasets, else a seeded choice) or "sample" (random rows).
    Records of failed calls (``status`` "error") are dropped and counted (``meta["n_failed_dropped"]``); costs,
    successes and qualities out of range are refused. Columnar throughout: string columns become sorted integer codes (Arrow hashing), aggregation is a bincount
    over (row, model) codes, and only the kept rows' strings are materialised.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if granularity not in ("sample", "dataset-prompt"):
        raise VisrouteError("granularity must be 'sample' or 'dataset-prompt'")
    failed = failed_mask(records)
    n_failed = int(failed.sum())
    if n_failed:  # a failed call is an error, never a sample: it says nothing of the model's accuracy or cost
        records = records.filter(pa.array(~failed))
    if not records.num_rows:
        raise VisrouteError(f"no usable records: all {n_failed} record(s) are failed calls" if n_failed
                            else "no records to build a table from")
    check_record_values(records)
    n = records.num_rows
    d, d_vals = _codes(records, "dataset", "")
    p, p_vals = _codes(records, "prompt_variant", "*")
    t, t_vals = _codes(records, "task_id", "")
    mc, models = _codes(records, "model", "")
    correct = _floats(records, "correct", np.nan)
    if "quality" in records.column_names:  # graded outcomes in [0, 1] (e.g. judge scores) where given; `correct` elsewhere
        quality = _floats(records, "quality", np.nan)
        correct = np.where(np.isnan(quality), correct, quality)
    cost = np.nan_to_num(_floats(records, "cost", 0.0), nan=0.0)
    score = _floats(records, "score", np.nan)
    answer = (pc.fill_null(records.column("answer").cast(pa.string()), "").to_numpy(zero_copy_only=False).astype(object)
              if "answer" in records.column_names else np.full(n, "", dtype=object))
    stars = np.flatnonzero(p_vals.to_numpy(zero_copy_only=False) == "*")
    sel, p = _broadcast_star(d, p, int(stars[0]) if len(stars) else None)
    d, t, mc, correct, cost, score, answer = d[sel], t[sel], mc[sel], correct[sel], cost[sel], score[sel], answer[sel]

    row, R = _row_keys([d, p, t] if granularity == "sample" else [d, p])
    M = len(models)
    flat = row.astype(np.int64) * M + mc
    sums = np.bincount(flat, weights=correct, minlength=R * M).reshape(R, M)
    counts = np.bincount(flat, minlength=R * M).reshape(R, M).astype(np.float64)
    csum = np.bincount(flat, weights=cost, minlength=R * M).reshape(R, M)
    has = np.isfinite(score)
    ssum = np.bincount(flat[has], weights=score[has], minlength=R * M).reshape(R, M)
    scount = np.bincount(flat[has], minlength=R * M).reshape(R, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        success = np.where(counts > 0, sums / counts, np.nan).astype(np.float32)
        mean_cost = np.where(counts > 0, csum / counts, np.nan).astype(np.float32)
        mean_score = np.where(scount > 0, ssum / scount, np.nan).astype(np.float32)
    order = np.argsort(row, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(row[order])) + 1] if len(row) else np.zeros(0, np.int64)
    first = np.full(R, -1, np.int64)
    first[row[order][starts]] = order[starts]  # the first record of each row (after the star broadcast)
    weight = counts.max(axis=1).astype(np.float32)
    answers = np.full((R, M), "", dtype=object)
    given = np.flatnonzero(answer != "")[::-1]  # the first record's answer wins: assigned last
    answers.reshape(-1)[flat[given]] = answer[given]

    def take(name: str, default: str, codes: np.ndarray | None = None, values=None) -> np.ndarray:
        if codes is not None:
            return values.take(codes[first]).to_numpy(zero_copy_only=False).astype(str)
        if name not in records.column_names:
            return np.full(R, default)
        col = records.column(name).take(sel[first])  # straight from the records: no codes for free text
        col = col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
        return pc.fill_null(col.cast(pa.string()), "None").to_numpy(zero_copy_only=False).astype(str)

    r_dataset, r_prompt = take("dataset", "", d, d_vals), take("prompt_variant", "*", p, p_vals)
    sample = granularity == "sample"
    r_task = take("task_id", "", t, t_vals) if sample else np.full(R, "*")
    r_text = take("task_text", "")
    r_image = take("image_id", "") if sample else np.full(R, "")
    r_image_path = take("image_path", "") if sample else np.full(R, "")
    split = assign_splits(r_dataset, split_by, holdout, val_fraction, test_fraction, seed)
    meta = {"granularity": granularity, "split_by": split_by, "holdout": holdout, "seed": seed, "n_records": int(n),
            "n_failed_dropped": n_failed,
            "val_fraction": val_fraction, "test_fraction": test_fraction, **record_provenance(records)}
    return RoutingTable([str(m) for m in models.to_pylist()], r_dataset, r_prompt, r_task, r_text, r_image,
                        r_image_path, success, mean_cost, weight, split, meta, mean_score, answers)


def assign_splits(r_dataset: np.ndarray, split_by: str, holdout: list[str] | None, val_fraction: float,
                  test_fraction: float, seed: int) -> np.ndarray:
    """train/val/test per row: whole datasets held out (``split_by="dataset"``) or random rows ("sample")."""
    R = len(r_dataset)
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
    return split.astype(str)
