"""Make tests/fixtures/routerbench/: a small sample of RouterBench's ARC-Challenge and MBPP zero-shot tables.

    python scripts/make_routerbench_fixture.py SRC_DIR [--out tests/fixtures/routerbench] [--rows 300] [--seed 0]

SRC_DIR holds RouterDC's ``datasets/routerbench_zs`` CSVs (github.com/shuhao02/RouterDC; extract them from a
checkout or with ``git show HEAD:datasets/routerbench_zs/FILE``). Only the ARC-Challenge and MBPP files are
opened: the other benchmarks there (Winogrande among them, a reserved test set) are never read. Per benchmark,
``--rows`` prompts are drawn at random from its train and test files together.

Each ``MODEL|model_response`` cell is cut to what the importer reads of it (``answer_key``: the first line of the
response, a stored list literal unwrapped, at most 200 characters): the first line of the unwrapped text, its
first 200 characters (a few more where the 200th is a space, which reading the cell back would strip), stored as
a one-element list literal like the source's, so that a line such as ``None`` or ``['A']`` is not read back as
something else; an empty response stays empty. Whole responses (MBPP's are programs) would be most of the bytes,
and the agreement cascade compares only the keys. The script reads each written file back and stops if any
cell's answer key differs from the source's.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from visroute.router.data.routerbench import answer_key, prompt_text

FILES = {"arc_challenge": ("arc_challenge_train.csv", "arc_challenge_test.csv"), "mbpp": ("mbpp_train.csv", "mbpp_test.csv")}
RESPONSE = "|model_response"
KEY_CHARS = 200  # answer_key keeps this many characters of the first line


def reduce_response(raw) -> str | None:
    """The part of a response the importer's ``answer_key`` reads, as a one-element list literal (None: empty)."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None
    lines = prompt_text(raw).splitlines()  # the text answer_key takes its first line from
    first = lines[0].strip() if lines else ""
    end = min(KEY_CHARS, len(first))
    while end and first[end - 1].isspace():  # the key may end in a space: keep up to the next character, since
        end += 1                             # reading the cell back strips trailing space
    return repr([first[:end]]) if first else None


def check_keys(written: pd.DataFrame, source: pd.DataFrame) -> None:
    """Stop unless every response cell read back from the fixture has the source cell's answer key."""
    cols = [c for c in source.columns if c.endswith(RESPONSE)]
    src, got = source.set_index("sample_id")[cols], written.set_index("sample_id").loc[source["sample_id"], cols]
    for c in cols:
        bad = [s for s, a, b in zip(src.index, src[c], got[c]) if answer_key(a) != answer_key(b)]
        if bad:
            raise SystemExit(f"{c}: the reduced response changes the answer key of sample {bad[0]} ({len(bad)} cells)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/routerbench"))
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for name, files in FILES.items():
        df = pd.concat([pd.read_csv(a.src / f) for f in files], ignore_index=True)
        df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed")])
        df = df.drop_duplicates("sample_id").sample(n=min(a.rows, len(df)), random_state=a.seed).sort_values("sample_id")
        out = df.copy()
        for c in (c for c in df.columns if c.endswith(RESPONSE)):
            out[c] = df[c].map(reduce_response)
        path = a.out / f"{name}.csv"
        out.to_csv(path, index=False)
        check_keys(pd.read_csv(path, low_memory=False), df)  # read back as the importer reads it
        print(f"{name}: {len(out)} rows x {out.shape[1]} columns -> {path}")


if __name__ == "__main__":
    main()
