"""`visroute route import routerbench`: RouterBench's layout read from the shipped fixture, real per-call costs,
bad cells skipped and counted, pickles refused without being opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from typer.testing import CliRunner

from visroute.cli import app

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "routerbench"


def test_import_keeps_every_outcome_and_its_recorded_cost(tmp_path):
    files = [FIXTURE / "arc_challenge.csv", FIXTURE / "mbpp.csv"]
    r = CliRunner().invoke(app, ["route", "import", "routerbench", *map(str, files), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 0, r.output
    assert "600 tasks x 11 models" in r.stdout
    rec = pq.read_table(tmp_path / "r.parquet").to_pandas()
    src = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    models = sorted(c[: -len("|total_cost")] for c in src.columns if c.endswith("|total_cost"))
    assert sorted(rec["model"].unique()) == models and set(rec["dataset"]) == {"arc-challenge", "mbpp"}
    usable = sum(int((src[m].notna() & src[m + "|total_cost"].notna()).sum()) for m in models)
    assert len(rec) == usable and f"skipped {len(src) * len(models) - usable} missing" in r.stdout
    row = src.iloc[7]
    for m in models[:3]:
        got = rec[(rec.task_id == row["sample_id"]) & (rec.model == m)]
        if np.isfinite(row[m]):
            assert got["cost"].item() == row[m + "|total_cost"] and got["correct"].item() == (row[m] >= 0.5)
    text = rec.loc[rec.task_id == row["sample_id"], "task_text"].iloc[0]
    assert not text.startswith("[") and not text.endswith("]") and text[:30] in row["prompt"]  # list literal unwrapped


def test_bad_files_are_one_line_errors(tmp_path):
    runner = CliRunner()
    pkl = tmp_path / "routerbench_0shot.pkl"
    pkl.write_bytes(b"\x80\x04 not opened")  # never unpickled: the suffix alone refuses it
    r = runner.invoke(app, ["route", "import", "routerbench", str(pkl), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 2 and "pickles run code" in r.output and "read_pickle" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["route", "import", "routerbench", str(bad), "--out", str(tmp_path / "r.parquet")])
    assert r.exit_code == 2 and "not RouterBench's layout" in r.output
    odd = tmp_path / "odd.csv"
    odd.write_text("sample_id,prompt,eval_name,m,m|total_cost\ns1,hello there,x,1.7,0.1\ns2,hi again,x,1,-3\n"
                   "s3,fine,x,0,0.2\n")
    r = runner.invoke(app, ["route", "import", "routerbench", str(odd), "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 0 and "skipped 2 missing or out-of-range" in r.stdout  # outcome 1.7, cost -3
    assert len(pq.read_table(tmp_path / "o.parquet")) == 1
