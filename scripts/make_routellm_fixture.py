"""Cut the small RouteLLM fixture in tests/fixtures/routellm/ from a RouteLLM checkout.

    python scripts/make_routellm_fixture.py /path/to/RouteLLM [--out tests/fixtures/routellm]

Keeps RouteLLM's file layout (so `visroute route import routellm` reads the fixture like a checkout) with:
the first 40 GSM8K rows (responses cut to 300 characters) and the contaminated-prompt lines that name them;
12 MT-Bench questions (the first of each of 8 categories plus the next 4 question ids), their judgements (judge
text and prompt cut to 200 characters) and contaminated-prompt lines. Only the two development sets are read.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

GSM8K_ROWS, CUT_RESPONSE, CUT_JUDGE = 40, 300, 200


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def cut_gsm8k(src: Path, dst: Path) -> None:
    with (src / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        rows = [r for _, r in zip(range(GSM8K_ROWS), reader)]
    for r in rows:
        for k in fields:
            if k.endswith("_response"):
                r[k] = r[k][:CUT_RESPONSE]
    dst.mkdir(parents=True, exist_ok=True)
    with (dst / "gsm8k_responses.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    prompts = {r["prompt"] for r in rows}
    cont = [{"eval_prompt": c["eval_prompt"]} for c in _jsonl(src / "contaminated_prompts.jsonl")
            if c["eval_prompt"] in prompts]
    _write_jsonl(dst / "contaminated_prompts.jsonl", cont)


def cut_mt_bench(src: Path, dst: Path) -> None:
    questions = _jsonl(src / "question.jsonl")
    firsts = {}
    for q in questions:
        firsts.setdefault(q["category"], q["question_id"])
    ids = sorted(firsts.values())
    ids += [q["question_id"] for q in questions if q["question_id"] not in ids][:4]
    keep = set(ids)
    dst.mkdir(parents=True, exist_ok=True)
    _write_jsonl(dst / "question.jsonl", [q for q in questions if q["question_id"] in keep])
    judged = []
    for j in _jsonl(src / "judgements.jsonl"):
        if j["question_id"] in keep:
            judged.append({**j, "user_prompt": j["user_prompt"][:CUT_JUDGE], "judgment": j["judgment"][:CUT_JUDGE]})
    _write_jsonl(dst / "judgements.jsonl", judged)
    turns = {t for q in questions if q["question_id"] in keep for t in q["turns"]}
    _write_jsonl(dst / "contaminated_prompts.jsonl",
                 [{"eval_prompt": c["eval_prompt"]} for c in _jsonl(src / "contaminated_prompts.jsonl")
                  if c["eval_prompt"] in turns])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="RouteLLM checkout (the folder holding routellm/)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/routellm")
    a = ap.parse_args()
    evals = a.checkout / "routellm" / "evals"
    cut_gsm8k(evals / "gsm8k", a.out / "routellm/evals/gsm8k")
    cut_mt_bench(evals / "mt_bench", a.out / "routellm/evals/mt_bench")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
