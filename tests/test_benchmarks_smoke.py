"""Benchmarks cannot rot: every script in benchmarks/ runs at its ``--smoke`` size (seconds, nothing written to
results/) and exits 0. A script is any benchmarks/*.py with a ``__main__`` block that is not a helper (``_*.py``)
or a peer server another benchmark starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
PEERS = {"naive_serve.py"}  # started by bench_serve.py with its own arguments; not a benchmark of its own
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name not in PEERS
                 and 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))


def test_every_benchmark_is_found():
    assert {"bench_classify.py", "bench_router.py", "router_quality.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_run(script, tmp_path, shared_data):
    results = {p: p.stat().st_mtime_ns for p in (BENCH / "results").glob("*")}
    env = {**os.environ, "VISROUTE_CACHE": str(tmp_path / "cache"), "VISROUTE_SHARED_DATA": str(shared_data),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"{script} --smoke exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert {p: p.stat().st_mtime_ns for p in (BENCH / "results").glob("*")} == results, "a smoke run wrote results"
