"""RouterBench's released routing data (arXiv 2403.12031; the RouterDC repository ships its zero-shot subsets as
CSV) as visroute records, with the real per-call cost of every model.

The layout: one row per prompt with ``sample_id``, ``prompt`` and ``eval_name`` (the benchmark), and per model a
column named after it holding the outcome (1/0, or a graded score in [0, 1]), ``MODEL|total_cost`` (USD paid for
that call) and ``MODEL|model_response``. Models are the columns that have a ``|total_cost`` partner.

- ``correct`` is outcome >= 0.5 and ``quality`` the outcome itself (the routing table uses ``quality``).
- ``answer`` is the model's response reduced to a comparable key (``answer_key``: its first line, stripped, upper
  case, at most 200 characters; None where the file has no response): a cascade may stop when two models agree.
- ``cost`` is the recorded ``total_cost`` of that call: no price table is applied.
- ``prompt`` is stored as a Python list literal (``"['...']"``); it is read with ``ast.literal_eval``, which
  evaluates literals only and runs no code. The task text is the prompt's parts joined by new lines.
- A (prompt, model) cell whose outcome or cost is missing, not a number or out of range is skipped and
  counted: a failed call is never a sample. A ``sample_id`` seen before (e.g. in a second file) adds only the
  cells its first row lacked when its prompt is the same, and is skipped when the prompt differs (RouterDC's
  ARC-Challenge files repeat 14 ids, each time with another prompt text, so those rows are skipped).

Pickles (RouterBench's own ``.pkl`` release) are refused: unpickling a file runs code. Convert one yourself
with pandas (``pd.read_pickle(F).to_csv(...)``) once you trust it.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

from visroute.errors import VisrouteError

COST_SUFFIX = "|total_cost"
REQUIRED = ("sample_id", "prompt", "eval_name")


class RouterBenchDataError(VisrouteError):
    """A file is not in RouterBench's layout, or is a format visroute will not load."""


def _frame(path: Path):
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        raise RouterBenchDataError(f"{path}: pickles run code when loaded, so visroute does not read them; convert it "
                                   "yourself once you trust it: python -c \"import pandas as pd; "
                                   f"pd.read_pickle('{path.name}').to_csv('{path.stem}.csv')\"")
    if not path.is_file():
        raise RouterBenchDataError(f"{path} does not exist or is not a regular file")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path, low_memory=False)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise RouterBenchDataError(f"{path}: cannot be read as {suffix[1:]} ({str(e).splitlines()[0]})") from None
    raise RouterBenchDataError(f"{path}: expected a .csv or .parquet file (RouterBench's layout)")


def prompt_text(raw) -> str:
    """The prompt as text: a stored list literal becomes its parts joined by new lines."""
    s = "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw)
    if s.startswith("[") and s.endswith("]"):
        try:
            parts = ast.literal_eval(s)  # literals only: no code runs
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return s.strip()
        if isinstance(parts, (list, tuple)) and all(isinstance(p, str) for p in parts):
            return "\n".join(parts).strip()
    return s.strip()


def answer_key(raw) -> str | None:
    """A response as a key two answers can be compared on: the first line of its text (a stored one-element list
    literal is unwrapped), stripped and upper-cased, at most 200 characters; None when empty or missing."""
    s = "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw)
    if s.startswith("[") and s.endswith("]"):
        text = prompt_text(s)
        s = text if text != s.strip() else s
    lines = s.strip().splitlines()
    key = lines[0].strip().upper()[:200] if lines else ""
    return key or None


def _number(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_routerbench(paths) -> tuple["pa.Table", dict]:  # noqa: F821
    """Records (visroute's schema plus ``quality``) from RouterBench CSV/Parquet files, and a summary."""
    import pyarrow as pa

    from visroute.router.data.records import records_schema
    from visroute.tasks.model import task_text

    rows, seen, summary = [], {}, {"files": [], "skipped_cells": 0, "duplicate_prompts": 0, "models": []}
    for p in map(Path, paths):
        df = _frame(p)
        missing = [c for c in REQUIRED if c not in df.columns]
        models = [c[: -len(COST_SUFFIX)] for c in df.columns if c.endswith(COST_SUFFIX) and c[: -len(COST_SUFFIX)] in df]
        if missing or not models:
            raise RouterBenchDataError(f"{p}: not RouterBench's layout (missing {missing or 'MODEL and MODEL|total_cost columns'})")
        summary["files"].append({"file": p.name, "rows": int(len(df)), "models": len(models)})
        summary["models"] = sorted(set(summary["models"]) | set(models))
        for rec in df.to_dict("records"):
            sid, bench = str(rec["sample_id"]), str(rec["eval_name"])
            text = task_text(prompt_text(rec["prompt"]))
            if (bench, sid) in seen:
                summary["duplicate_prompts"] += 1
                if seen[(bench, sid)][0] != text:
                    continue  # the same id for another prompt: the first one stands
            elif not text:
                summary["skipped_cells"] += len(models)
                continue
            done = seen.setdefault((bench, sid), (text, set()))[1]
            for m in models:
                if m in done:  # measured in an earlier row of this prompt
                    continue
                q, c = _number(rec[m]), _number(rec[m + COST_SUFFIX])
                if q is None or c is None or not 0.0 <= q <= 1.0 or c < 0:
                    summary["skipped_cells"] += 1
                    continue
                done.add(m)
                rows.append((sid, bench, text, m, q, c, answer_key(rec.get(m + "|model_response"))))
    if not rows:
        raise RouterBenchDataError("the files hold no usable (prompt, model) outcome")
    n = len(rows)
    sid, bench, text, model, q, c, answer = (list(x) for x in zip(*rows))
    cols = {"task_id": sid, "dataset": bench, "prompt_variant": ["*"] * n, "task_text": text, "image_id": [""] * n,
            "image_path": [""] * n, "model": model, "correct": [v >= 0.5 for v in q], "score": [float("nan")] * n,
            "cost": c, "latency_s": [float("nan")] * n, "dataset_spec": [f"routerbench:{b}" for b in bench],
            "pipeline": [None] * n, "status": ["ok"] * n, "error": [None] * n, "quality": q, "answer": answer}
    schema = records_schema().append(pa.field("quality", pa.float32())).append(pa.field("answer", pa.string()))
    summary.update(records=n, tasks=len(seen), datasets=sorted(set(bench)))
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema), summary


def import_routerbench(paths, out: str | Path) -> dict:
    """Write ``out`` (records Parquet) from RouterBench files; returns the summary."""
    from visroute.io import atomic_write_parquet

    table, summary = read_routerbench(paths)
    atomic_write_parquet(Path(out), table)
    summary["out"] = str(out)
    return summary
