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
    from visroute.router.data.grid import GridSpec, run_grid

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
    from visroute.router.learn.llm_router import LLMRouter, ModelCard

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


# ---------------------------------------------------------------- 2. range checks at every boundary

def records_table(**cols) -> pa.Table:
    n = len(next(iter(cols.values())))
    base = {"task_id": [f"t{i}" for i in range(n)], "dataset": ["d"] * n, "prompt_variant": ["*"] * n,
            "model": ["a" if i % 2 else "b" for i in range(n)], "correct": [True] * n, "cost": [0.1] * n}
    return pa.table({**base, **cols})


@pytest.mark.parametrize("col, values, words", [
    ("cost", [math.inf, 0.1, 0.1, 0.1], "'cost' are not finite and >= 0"),
    ("cost", [-1.0, 0.1, 0.1, 0.1], "'cost' are not finite and >= 0"),
    ("correct", [7, 1, 0, 1], "'correct' are not 0/1"),
    ("quality", [3.0, 0.5, 0.5, 0.5], "'quality' are not in [0, 1]"),
    ("quality", [math.nan, 0.5, 0.5, 0.5], "'quality' are not in [0, 1]"),
], ids=["cost-inf", "cost-negative", "correct-7", "quality-3", "quality-nan"])
def test_records_out_of_range_are_refused_in_one_line(col, values, words):
    from visroute.errors import VisrouteError
    from visroute.router.data.table import build_table

    with pytest.raises(VisrouteError, match=None) as e:
        build_table(records_table(**{col: values}))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unpriced_records_keep_working():
    from visroute.router.data.table import build_table

    t = build_table(records_table(cost=[math.nan, None, 0.2, 0.0]))
    assert np.isfinite(t.cost).any() and (np.nan_to_num(t.cost) >= 0).all()


def make_bundle(d: Path, costs=(0.1, 1.0), lam: float = 0.0) -> Path:
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.learn.kinds import make_router

    rng = np.random.default_rng(0)
    router = make_router("knn", k=3).fit(rng.normal(size=(12, 8)).astype(np.float32),
                                          (rng.random((12, 2)) > 0.5).astype(np.float32))
    RouterBundle(router, "knn", ["small", "large"], np.asarray(costs), lam).save(d)
    return d


def tamper(d: Path, fn) -> None:
    info = json.loads((d / "router.json").read_text())
    fn(info)
    (d / "router.json").write_text(json.dumps(info))


BUNDLES = [
    ("costs-nan-negative", lambda i: i.update(costs=[float("nan"), -1]), "'costs' must be finite"),
    ("costs-inf", lambda i: i.update(costs=[1e400, 1]), "'costs' must be finite"),
    ("lambda-negative", lambda i: i.update({"lambda": -1}), "'lambda' must be finite and >= 0"),
    ("lambda-nan", lambda i: i.update({"lambda": float("nan")}), "'lambda' must be finite and >= 0"),
    ("lambda-string", lambda i: i.update({"lambda": "lots"}), "'lambda' must be a number"),
    ("state-wrong-type", lambda i: i["router"]["state"].update(X_={"type": "json", "value": "many"}),
     "cannot predict with its saved state"),
    ("param-wrong-type", lambda i: i["router"]["params"].update(k="many"), "cannot predict with its saved state"),
    ("meta-not-object", lambda i: i.update(meta=[1, 2]), "'meta' must be a JSON object"),
]


@pytest.mark.parametrize("name, fn, words", BUNDLES, ids=[b[0] for b in BUNDLES])
def test_bundles_out_of_range_or_of_wrong_types_are_refused_at_load(tmp_path, name, fn, words):
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.learn.persist import BundleError

    d = make_bundle(tmp_path / "router")
    assert RouterBundle.load(d).models == ["small", "large"]  # the untouched bundle loads
    tamper(d, fn)
    with pytest.raises(BundleError) as e:
        RouterBundle.load(d)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("lam", [-1.0, math.nan, math.inf])
def test_choose_refuses_a_lambda_that_rewards_cost(lam):
    from visroute.errors import InputError
    from visroute.router.decide.rules import choose

    with pytest.raises(InputError, match="lambda must be finite"):
        choose(np.full((1, 2), 0.5), np.array([0.1, 1.0]), lam)
    with pytest.raises(InputError, match="costs must be finite"):
        choose(np.full((1, 2), 0.5), np.array([math.nan, -1.0]), 0.0)


@pytest.mark.parametrize("args, words", [
    (["route", "ask", "--task", "q", "--options", "a,b", "--lambda=-1000000", "--dry-run"], "--lambda must be finite"),
    (["route", "ask", "--task", "q", "--options", "a,b", "--lambda", "nan", "--dry-run"], "--lambda must be finite"),
    (["route", "train", "table", "--target-share", "1.5"], "target share must be in [0, 1]"),
    (["route", "train", "table", "--target-cost=-1"], "target cost must be finite and > 0"),
    (["route", "train", "table", "--heavy", "nosuch"], "--heavy 'nosuch' is not a model"),
], ids=["lambda-negative", "lambda-nan", "target-share", "target-cost", "heavy-nosuch"])
def test_cli_options_out_of_range_are_one_line_exit_2(tmp_path, args, words):
    from visroute.router.data.table import build_table

    make_bundle(tmp_path / "router")
    build_table(records_table(cost=[0.1, 1.0, 0.1, 1.0] * 3, task_id=[f"t{i}" for i in range(12)],
                              dataset=["d"] * 12, prompt_variant=["*"] * 12, correct=[True, False] * 6,
                              model=["a", "b"] * 6, task_text=["q"] * 12), split_by="sample").save(tmp_path / "table")
    res = run_cli(args, tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    one_error_line(res, words)


# ---------------------------------------------------------------- 3. one safe YAML/JSON loader

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"


def test_yaml_alias_bomb_in_inline_prices_is_refused_at_once(tmp_path):
    import time

    from visroute.errors import VisrouteError
    from visroute.router.data.grid import GridSpec

    g = tmp_path / "grid.yaml"
    inline = "\n".join("    " + line for line in BOMB.splitlines())
    g.write_text(f"datasets: [x]\nmodels:\n  - name: m\n    head: vlm\n    vlm: hf:/x\n    prices:\n{inline}\n")
    t0 = time.monotonic()
    with pytest.raises(VisrouteError, match=r"YAML alias \*a at line \d+ refused") as e:
        GridSpec.load(g)
    assert time.monotonic() - t0 < 2 and "\n" not in str(e.value) and str(g) in str(e.value)


@pytest.mark.parametrize("kind", ["json-deep", "yaml-deep", "yaml-alias", "json-not-utf8", "too-big"])
def test_safe_loader_refusals_are_one_line(kind):
    from visroute.safe_load import SafeLoadError, parse_json, parse_yaml

    cases = {"json-deep": (parse_json, "[" * 100000 + "]" * 100000, "nested deeper than 64"),
             "yaml-deep": (parse_yaml, "a: " + "[" * 5000, "nested deeper than 64"),
             "yaml-alias": (parse_yaml, BOMB, "alias"),
             "json-not-utf8": (parse_json, b"\xff\xfe{}", "not UTF-8"),
             "too-big": (lambda t, w: parse_json(t, w, max_bytes=10), '{"a": "0123456789"}', "over the")}
    fn, text, words = cases[kind]
    with pytest.raises(SafeLoadError) as e:
        fn(text, "f")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_deeply_nested_router_json_is_one_line(tmp_path):
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.learn.persist import BundleError

    d = make_bundle(tmp_path / "router")
    (d / "router.json").write_text('{"schema": "visroute.router/2", "meta": ' + "[" * 200000 + "]" * 200000 + "}")
    with pytest.raises(BundleError, match="nested deeper than 64") as e:
        RouterBundle.load(d)
    assert "\n" not in str(e.value)


def test_depth_counts_containers_not_brackets_in_strings():
    from visroute.safe_load import SafeLoadError, parse_json, value_depth

    assert value_depth(parse_json('{"a": "[[[\\"[[[", "b": [[1]], "c": {"d": {}}}')) == 3
    assert value_depth(5) == 0 and value_depth([]) == 1
    assert parse_json('{"a": "' + "[" * 500 + '"}') == {"a": "[" * 500}
    assert parse_json("[" * 64 + "]" * 64, max_depth=64) == parse_json("[" * 64 + "]" * 64)
    for deep in ("[" * 65 + "]" * 65, "[" * 900 + "]" * 900):  # under and over the C parser's recursion limit
        with pytest.raises(SafeLoadError, match="nested deeper than 64"):
            parse_json(deep)


# ---------------------------------------------------------------- 4. tracebacks become one line; silent wrongs errors

GRID_VALUES = [
    ("limit-lots", "limit: lots\n", "'limit' must be a whole number >= 1"),
    ("limit-negative", "limit: -1\n", "'limit' must be a whole number >= 1"),
    ("limit-zero", "limit: 0\n", "'limit' must be a whole number >= 1"),
    ("prompts-5", "prompts: 5\n", "'prompts' must be a list"),
    ("top-k-negative", "options_top_k: -3\n", "'options_top_k' must be a whole number >= 1"),
    ("output-file", "output: afile\n", "exists and is not a folder"),
    ("dataset-typo", None, "unknown key(s) ['nmae']"),
]


@pytest.mark.parametrize("name, extra, words", GRID_VALUES, ids=[g[0] for g in GRID_VALUES])
def test_grid_values_out_of_range_are_one_line(tmp_path, name, extra, words):
    from visroute.errors import VisrouteError
    from visroute.router.data.grid import GridSpec

    (tmp_path / "afile").write_text("I am a file")
    g = tmp_path / "grid.yaml"
    datasets = "[{spec: x, nmae: y}]" if extra is None else "[x]"
    g.write_text(f"datasets: {datasets}\nmodels: [{{name: m, head: zeroshot, model: 'hf:/x'}}]\n{extra or ''}")
    with pytest.raises(VisrouteError) as e:
        GridSpec.load(g)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_cli_grid_limit_lots_is_one_line_exit_2(tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text("datasets: [x]\nmodels: [{name: m, head: zeroshot, model: 'hf:/x'}]\nlimit: lots\n")
    res = run_cli(["grid", "run", str(g)], tmp_path, timeout=60)
    assert res.returncode == 2
    one_error_line(res, "'limit' must be a whole number")


@pytest.mark.parametrize("kind", ["not-parquet", "empty"])
def test_records_file_not_parquet_or_empty_is_one_line(tmp_path, kind):
    from visroute.errors import VisrouteError
    from visroute.router.data.table import read_records

    p = tmp_path / "records.parquet"
    p.write_bytes(b"" if kind == "empty" else b"task_id,model\n1,a\n")
    with pytest.raises(VisrouteError, match="is not a readable records file") as e:
        read_records(p)
    assert "\n" not in str(e.value)


def test_cache_env_naming_a_file_and_out_naming_a_file_are_one_line(tmp_path, monkeypatch):
    from visroute.errors import VisrouteError
    from visroute.io import atomic_write_json, cache_root

    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "f"))
    with pytest.raises(VisrouteError, match="is not a folder"):
        cache_root()
    with pytest.raises(VisrouteError, match="a file stands where a folder is needed") as e:
        atomic_write_json(tmp_path / "f" / "table.json", {})
    assert "\n" not in str(e.value) and (tmp_path / "f").read_text() == "x"


def test_disk_full_while_writing_is_one_line_and_earlier_results_stay(tmp_path, monkeypatch):
    import errno
    import os

    from visroute.io import WriteError, atomic_write_json

    target = tmp_path / "result.json"
    atomic_write_json(target, {"earlier": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="the disk is full") as e:
        atomic_write_json(target, {"later": 2})
    assert isinstance(e.value, OSError) and "\n" not in str(e.value)
    assert json.loads(target.read_text()) == {"earlier": 1} and not list(tmp_path.glob(".tmp-*"))


def test_skip_existing_with_a_damaged_result_or_missing_predictions_runs_again(tmp_path, caplog):
    import logging

    from visroute.eval.run import _existing_result

    bad = tmp_path / "r.json"
    bad.write_text('{"dataset": "d", "metr')
    with caplog.at_level(logging.WARNING, logger="visroute"):
        assert _existing_result(bad) is None
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"dataset": "d", "visroute": {"predictions_file": "g.parquet"}}))
    with caplog.at_level(logging.WARNING, logger="visroute"):
        assert _existing_result(good) is None  # its predictions Parquet is gone
    (tmp_path / "g.parquet").write_bytes(b"x")
    assert _existing_result(good)["_skipped_existing"] is True
    msgs = [r.getMessage() for r in caplog.records]
    assert any("not valid JSON" in m for m in msgs) and any("is missing; running it again" in m for m in msgs)


def test_a_pickle_in_a_model_folder_is_one_line_and_never_runs(tmp_path, tiny_clip_dir):
    import pickle
    import shutil

    from visroute.errors import ModelLoadError
    from visroute.models import load_model

    d = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, d)
    for w in d.glob("*.safetensors"):
        w.unlink()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ModelLoadError) as e:
        load_model(f"hf:{d}")
    assert "\n" not in str(e.value) and not marker.exists()


def test_description_file_of_only_empty_lists_is_an_error(tmp_path):
    from visroute.heads.description_sets import DescriptionError, load_descriptions

    p = tmp_path / "d.json"
    p.write_text('{"cat": [], "dog": []}')
    with pytest.raises(DescriptionError, match="every class's description list is empty"):
        load_descriptions(p)
    p.write_text('{"cat": ["whiskers"], "dog": []}')  # some empty classes stay allowed (fallbacks fill them)
    assert load_descriptions(p).empty_classes == ["dog"]


def test_contradictory_duplicate_manifest_rows_are_flagged(tmp_path, caplog):
    import logging

    from PIL import Image

    from visroute.data.datasets import load_dataset

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.png,cat\nb.png,dog\na.png,dog\n")
    with caplog.at_level(logging.WARNING, logger="visroute"):
        load_dataset(str(m))
    warned = [r.getMessage() for r in caplog.records if "second, different label" in r.getMessage()]
    assert len(warned) == 1 and "'dog' here but 'cat'" in warned[0] and "\n" not in warned[0]
    caplog.clear()
    m.write_text("path,label\na.png,cat\nb.png,dog\na.png,cat\n")  # an agreeing repeat is fine
    with caplog.at_level(logging.WARNING, logger="visroute"):
        assert len(load_dataset(str(m))) == 3
    assert not [r for r in caplog.records if "second, different label" in r.getMessage()]
