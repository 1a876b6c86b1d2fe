"""RouteLLM's released routing data (github.com/lm-sys/RouteLLM, Apache-2.0) as visroute records.

Reads the two development sets of a RouteLLM checkout; its MMLU responses are a reserved test set and are
never read here:

- ``routellm/evals/gsm8k/gsm8k_responses.csv``: one row per GSM8K test question, a True/False column per model
  (answer correct) and each model's response. ``correct`` and ``quality`` are that column.
- ``routellm/evals/mt_bench/judgements.jsonl`` with ``question.jsonl``: GPT-4 judge scores (1-10) of both models'
  answers to both turns of each MT-Bench question. ``quality`` is the mean of the two turns' scores / 10 (the
  per-question mean RouteLLM's MT-Bench score averages); ``correct`` is that mean >= 8 (a threshold for tools
  that need a yes/no; the routing table uses ``quality``). The task text is the first turn, the only text
  RouteLLM routes on, and each category becomes a dataset name (``mt-bench/<category>``), so ``route build
  --split dataset`` holds out whole topics.

Like RouteLLM's evaluation, prompts listed in each benchmark's ``contaminated_prompts.jsonl`` (found in
RouteLLM's router training data) are dropped (``keep_contaminated`` keeps them).

**Cost.** One call costs ``price per million tokens x TOKENS_PER_CALL / 1e6``: RouteLLM's paper prices
GPT-4 at $24.7 and Mixtral-8x7B at $0.24 per million tokens (a blend of input and output prices), a ratio of
about 100 to 1. A fixed per-call price keeps the strong-call share and the normalised cost the same axis; pass
``prices`` to use others. The files carry no confidence (``score`` is NaN) and no latency.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from visroute.errors import VisrouteError

#: USD per million tokens, as priced in RouteLLM's paper (blended input/output)
DEFAULT_PRICES = {"gpt-4-1106-preview": 24.7, "mistralai/Mixtral-8x7B-Instruct-v0.1": 0.24}
TOKENS_PER_CALL = 1000
GSM8K = Path("routellm/evals/gsm8k")
MT_BENCH = Path("routellm/evals/mt_bench")


class RouteLLMDataError(VisrouteError):
    """A RouteLLM checkout is missing a file or a file is not in the released format."""


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RouteLLMDataError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    return rows


def _contaminated(path: Path | None) -> set[str]:
    return {r["eval_prompt"] for r in _jsonl(path) if "eval_prompt" in r} if path else set()


def _price(model: str, prices: dict[str, float]) -> float:
    if model not in prices:
        raise RouteLLMDataError(f"no price for model '{model}'; give one (USD per million tokens) with --price "
                                f"'{model}=PRICE'")
    return float(prices[model]) * TOKENS_PER_CALL / 1e6


def parse_prices(items: list[str]) -> dict[str, float]:
    """``MODEL=USD_PER_MILLION_TOKENS`` strings (the model name may itself hold '=') to a price dict."""
    out = {}
    for item in items:
        model, sep, value = item.rpartition("=")
        try:
            price = float(value)
        except ValueError:
            price = float("nan")
        if not sep or not model or not price >= 0:
            raise RouteLLMDataError(f"--price expects MODEL=USD_PER_MILLION_TOKENS (a non-negative number), got {item!r}")
        out[model] = price
    return out


def gsm8k_rows(path: Path, contaminated: set[str], prices: dict[str, float]) -> tuple[list[dict], int]:
    """Records of the GSM8K responses file, and how many contaminated prompts were dropped."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        models = [c for c in cols if c != "prompt" and not c.endswith("_response")]
        if "prompt" not in cols or not models:
            raise RouteLLMDataError(f"{path}: expected a 'prompt' column and one True/False column per model")
        out, dropped = [], 0
        for i, row in enumerate(reader):
            if row["prompt"] in contaminated:
                dropped += 1
                continue
            for m in models:
                v = str(row[m]).strip()
                if v not in ("True", "False"):
                    raise RouteLLMDataError(f"{path}: row {i + 2}, column '{m}': expected True or False, got {v!r}")
                ok = v == "True"
                out.append({"task_id": f"gsm8k-{i}", "dataset": "gsm8k", "task_text": row["prompt"], "model": m,
                            "correct": ok, "quality": float(ok), "cost": _price(m, prices)})
    return out, dropped


def mt_bench_rows(judgements: Path, questions: Path, contaminated: set[str],
                  prices: dict[str, float]) -> tuple[list[dict], int]:
    """Records of the MT-Bench judgements (one per question and model), and how many questions were dropped."""
    qs = {}
    for q in _jsonl(questions):
        try:
            qs[int(q["question_id"])] = (str(q["category"]), [str(t) for t in q["turns"]])
        except (KeyError, TypeError, ValueError):
            raise RouteLLMDataError(f"{questions}: each line needs question_id, category and turns") from None
    scores: dict[tuple[int, str], list[float]] = {}
    for j in _jsonl(judgements):
        try:
            key, s = (int(j["question_id"]), str(j["model"])), float(j["score"])
        except (KeyError, TypeError, ValueError):
            raise RouteLLMDataError(f"{judgements}: each line needs question_id, model and score") from None
        if s >= 1:  # FastChat writes -1 when the judge's verdict could not be parsed
            scores.setdefault(key, []).append(s)
    out, dropped = [], set()
    for (qid, model), ss in sorted(scores.items()):
        if qid not in qs:
            raise RouteLLMDataError(f"{judgements}: question {qid} is not in {questions}")
        category, turns = qs[qid]
        if any(t in contaminated for t in turns):
            dropped.add(qid)
            continue
        quality = float(np.mean(ss)) / 10.0
        out.append({"task_id": f"mt-bench-{qid}", "dataset": f"mt-bench/{category}", "task_text": turns[0],
                    "model": model, "correct": quality >= 0.8, "quality": quality, "cost": _price(model, prices)})
    return out, len(dropped)


def read_routellm(root: str | Path, prices: dict[str, float] | None = None, keep_contaminated: bool = False,
                  benchmarks: tuple[str, ...] = ("gsm8k", "mt-bench")):
    """Records (a pyarrow Table in visroute's schema plus a ``quality`` column) and a summary dict."""
    import pyarrow as pa

    from visroute.router.data.records import records_schema

    root = Path(root).expanduser()
    if not root.is_dir():
        raise RouteLLMDataError(f"{root} is not a directory (give a RouteLLM checkout)")
    prices = {**DEFAULT_PRICES, **(prices or {})}
    rows, summary = [], {"source": str(root), "prices_usd_per_mtok": prices, "tokens_per_call": TOKENS_PER_CALL}
    for bench in benchmarks:
        files = _files(root, bench)
        cont = set() if keep_contaminated else _contaminated(files.get("contaminated"))
        if bench == "gsm8k":
            got, dropped = gsm8k_rows(files["responses"], cont, prices)
        else:
            got, dropped = mt_bench_rows(files["judgements"], files["questions"], cont, prices)
        rows += got
        summary[bench] = {"records": len(got), "tasks": len({r["task_id"] for r in got}),
                          "dropped_contaminated": dropped, "files": {k: str(v) for k, v in files.items()}}
    n = len(rows)
    cols = {f.name: [r.get(f.name) for r in rows] for f in records_schema()}
    cols.update(prompt_variant=["*"] * n, image_id=[""] * n, image_path=[""] * n, score=[float("nan")] * n,
                latency_s=[float("nan")] * n, pipeline=[None] * n,
                dataset_spec=[f"routellm:{r['dataset'].split('/')[0]}" for r in rows])
    schema = records_schema().append(pa.field("quality", pa.float32()))
    cols["quality"] = [r["quality"] for r in rows]
    return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema), summary


def _files(root: Path, bench: str) -> dict[str, Path]:
    """The benchmark's files under a checkout (``root`` may also be its routellm/ or routellm/evals/ folder)."""
    names = {"gsm8k": (GSM8K, {"responses": "gsm8k_responses.csv"}),
             "mt-bench": (MT_BENCH, {"judgements": "judgements.jsonl", "questions": "question.jsonl"})}
    if bench not in names:
        raise RouteLLMDataError(f"unknown RouteLLM benchmark '{bench}' (gsm8k, mt-bench)")
    rel, wanted = names[bench]
    for base in (root / rel, root / Path(*rel.parts[1:]), root / rel.name):
        if all((base / f).is_file() for f in wanted.values()):
            out = {k: base / f for k, f in wanted.items()}
            if (base / "contaminated_prompts.jsonl").is_file():
                out["contaminated"] = base / "contaminated_prompts.jsonl"
            return out
    raise RouteLLMDataError(f"{root} has no {rel}/{' and '.join(wanted.values())} (is it a RouteLLM checkout? "
                            "get one with: git clone https://github.com/lm-sys/RouteLLM)")


def import_routellm(root: str | Path, out: str | Path, **kw) -> dict:
    """Write ``out`` (records Parquet) from a RouteLLM checkout; returns the summary."""
    from visroute.io import atomic_write_parquet

    table, summary = read_routellm(root, **kw)
    atomic_write_parquet(Path(out), table)
    summary["out"] = str(out)
    return summary
