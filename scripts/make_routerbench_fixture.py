"""Make tests/fixtures/routerbench/: a small sample of RouterBench's ARC-Challenge and MBPP zero-shot tables.

    python scripts/make_routerbench_fixture.py SRC_DIR [--out tests/fixtures/routerbench] [--rows 300] [--seed 0]

SRC_DIR holds RouterDC's ``datasets/routerbench_zs`` CSVs (github.com/shuhao02/RouterDC; extract them from a
checkout or with ``git show HEAD:datasets/routerbench_zs/FILE``). Only the ARC-Challenge and MBPP files are
opened: the other benchmarks there (Winogrande among them, a reserved test set) are never read. Per benchmark,
``--rows`` prompts are drawn at random from its train and test files together; the ``MODEL|model_response``
columns are dropped (the importer does not need them, and they are most of the bytes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

FILES = {"arc_challenge": ("arc_challenge_train.csv", "arc_challenge_test.csv"), "mbpp": ("mbpp_train.csv", "mbpp_test.csv")}


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
        df = df.drop(columns=[c for c in df.columns if c.endswith("|model_response") or c.startswith("Unnamed")])
        df = df.drop_duplicates("sample_id").sample(n=min(a.rows, len(df)), random_state=a.seed).sort_values("sample_id")
        df.to_csv(a.out / f"{name}.csv", index=False)
        print(f"{name}: {len(df)} rows x {df.shape[1]} columns -> {a.out / (name + '.csv')}")


if __name__ == "__main__":
    main()
