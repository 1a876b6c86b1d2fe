"""Hardening, round two (issue 22): failed calls never become routing data; range checks at every boundary; one
safe YAML/JSON loader; tracebacks turned into one line; total deadlines in the CLI.

Each CLI case runs ``visroute`` as a child process with a deadline and asserts the exit code, one ``error:`` line
(never a traceback), bounded time and that earlier results are intact.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fault_server import FaultServer
from tests.test_bad_inputs_cli import one_error_line, run_cli

FAILING = ["500", "null_content", "huge", "malformed"]


def task_file(path: Path, n: int = 4) -> Path:
    rows = [{"id": f"t{i}", "question": f"Which colour is item {i}?", "choices": ["red", "blue"], "answer": i % 2}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grid_file(tmp_path: Path, srv: FaultServer, extra: str = "") -> Path:
    tasks = task_file(tmp_path / "tasks.jsonl")
    g = tmp_path / "grid.yaml"
    g.write_text(f"output: {tmp_path / 'grid'}\ndatasets: [{tasks}]\nmodels:\n"
                 f"  - {{name: remote, head: vlm, vlm: 'openai-compatible:{srv.base_url}#m', max_tokens: 8}}\n{extra}")
    return g


def env(srv: FaultServer) -> dict:
    return {"VISROUTE_ALLOW_ENDPOINTS": srv.base_url}


# ---------------------------------------------------------------- 1. failed calls are errors, never samples

@pytest.fixture()
def fast_runtime(monkeypatch):
    """Short deadlines and no retries for in-process grids (the CLI's defaults retry a 500 for seconds)."""
    import functools

    from visroute.pipeline import build

    monkeypatch.setattr(build, "Runtime", functools.partial(build.Runtime, timeout=3.0, retries=0))


@pytest.mark.parametrize("mode", FAILING)
def test_grid_cell_whose_calls_all_fail_stores_nothing_and_is_measured_again(tmp_path, mode, fast_runtime,
                                                                             monkeypatch):
    from visroute.errors import CallsFailed
    from visroute.llm.http import EndpointLimiter
    from visroute.router.grid import GridSpec, run_grid

    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    with FaultServer(mode) as srv:
        monkeypatch.setenv("VISROUTE_ALLOW_ENDPOINTS", srv.base_url)
        grid = GridSpec.load(grid_file(tmp_path, srv))
        with pytest.raises(CallsFailed, match="1 grid cell.s. failed") as e:
            run_grid(grid, progress=False, log=lambda m: None)
        assert "\n" not in str(e.value)
        assert not list((tmp_path / "grid" / "records").glob("*.parquet"))  # nothing a re-run would skip
        srv.mode = "ok"  # the endpoint recovers: the cell is measured on the next run
        rec = pq.read_table(run_grid(grid, progress=False, log=lambda m: None)).to_pandas()
        assert len(rec) == 4 and set(rec["status"]) == {"ok"}
    EndpointLimiter._all.pop(srv.base_url, None)


def test_cli_grid_all_failed_exits_1_with_one_line(tmp_path):
    with FaultServer("400") as srv:
        res = run_cli(["grid", "run", str(grid_file(tmp_path, srv)), "--no-progress"], tmp_path, timeout=90,
                      **env(srv))
    assert res.returncode == 1, res.stderr
    one_error_line(res, "1 grid cell(s) failed")
    assert not list((tmp_path / "grid" / "records").glob("*.parquet")) and res.elapsed < 60


def test_grid_partial_failure_is_counted_marked_and_dropped_by_route_build(tmp_path):
    with FaultServer("ok") as srv:
        srv.script = ["400"]  # the first call fails (not retried), the rest answer
        g = grid_file(tmp_path, srv)
        res = run_cli(["grid", "run", str(g), "--no-progress"], tmp_path, timeout=90, **env(srv))
        assert res.returncode == 0, res.stderr
        assert "1 of 4 call(s) failed" in res.stderr
        rec = pq.read_table(tmp_path / "grid" / "records.parquet").to_pandas()
        assert sorted(rec["status"]) == ["error", "ok", "ok", "ok"]
        assert rec.loc[rec.status == "error", "error"].str.contains("HTTP 400").all()
    res = run_cli(["route", "build", str(tmp_path / "grid" / "records.parquet"), "--out", "table", "--no-quality"],
                  tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "dropped 1 record(s) of failed calls" in res.stderr
    meta = json.loads((tmp_path / "table" / "table.json").read_text())
    assert meta["n_failed_dropped"] == 1 and meta["n_records"] == 3


@pytest.mark.parametrize("mode", ["500", "malformed"])
def test_llm_router_whose_calls_all_fail_raises_and_partial_failure_is_counted(tmp_path, mode):
    from visroute.errors import CallsFailed
    from visroute.router.llm_router import LLMRouter, ModelCard

    cards = [ModelCard("small", 0.1), ModelCard("large", 1.0)]
    with FaultServer(mode, answer=lambda p: "large") as srv:
        from visroute.llm.cache import ResponseCache
        from visroute.llm.client import OpenAICompatibleGenerator

        gen = OpenAICompatibleGenerator(srv.base_url, "m", timeout=2, max_retries=0, cache=ResponseCache(tmp_path / "r.sqlite"))
        router = LLMRouter(gen, cards)
        with pytest.raises(CallsFailed, match="all 3 call"):
            router.route(["a", "b", "c"], ["d", "d", "d"])
        srv.mode, srv.script = "ok", [mode]
        out = router.route(["e", "f", "g"], ["d", "d", "d"])
        assert out["failed"] == 1 and list(out["picks"]).count(1) == 2


@pytest.mark.parametrize("mode", ["null_content", "huge"])
def test_eval_vlm_whose_calls_all_fail_exits_1_and_writes_no_result(tmp_path, mode):
    tasks = task_file(tmp_path / "tasks.jsonl")
    with FaultServer(mode) as srv:
        res = run_cli(["eval", "--head", "vlm", "--vlm", f"openai-compatible:{srv.base_url}#m", "-d", str(tasks),
                       "--timeout", "2", "--retries", "0", "--output", "res"], tmp_path, timeout=60)
    assert res.returncode == 1, res.stderr
    one_error_line(res, "all 4 call(s)", "failed")
    assert "0.000" not in res.stdout
    assert not list((tmp_path / "res").glob("*.json")) if (tmp_path / "res").exists() else True
