"""End to end on ../shared/data with tiny random models: grid -> records -> table -> router -> eval -> plot -> route."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from typer.testing import CliRunner

from tests.test_tasks import SQA_ROWS
from visroute.cli import app


def test_grid_build_train_eval_plot_and_route(tmp_path, shared_data, tiny_clip_dir, tiny_llava_dir, tiny_llama_dir,
                                               monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    tasks = tmp_path / "sqa.jsonl"
    tasks.write_text("\n".join(json.dumps({"id": f"q{i}", "image": str(shared_data / "imagenet-sample" / f"{img}.JPEG"),
                                           "question": q, "choices": c, "answer": a, "context": ctx})
                               for i, (img, q, c, a, ctx) in enumerate(SQA_ROWS)))
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
output: {tmp_path / 'grid'}
limit: 30
max_tokens: 4
device: cpu
datasets:
  - {shared_data / 'cifar10-test'}
  - {{spec: {tasks}, name: sqa}}
models:
  - {{name: clip-a, head: zeroshot, model: "hf:{tiny_clip_dir}"}}
  - {{name: clip-b, head: zeroshot, model: random-tiny}}
  - {{name: llava, head: vlm, vlm: "hf:{tiny_llava_dir}"}}
  - {{name: llava+llama, head: vlm+llm, vlm: "hf:{tiny_llava_dir}", llm: "hf:{tiny_llama_dir}"}}
prompts: [mcq, mcq-text]
""")
    runner = CliRunner()
    r = runner.invoke(app, ["grid", "run", str(grid), "--no-progress"])
    assert r.exit_code == 0, r.output
    records = pq.read_table(tmp_path / "grid" / "records.parquet").to_pandas()
    # 2 datasets x (2 clip models + llava x 2 prompt variants + llava+llama, whose prompts are fixed in its spec)
    assert set(records["model"]) == {"clip-a", "clip-b", "llava", "llava+llama"}
    assert len(records) == (30 + 8) * (2 + 2 + 1)
    assert set(records.loc[records.model == "llava+llama", "prompt_variant"]) == {"*"}
    assert records["cost"].notna().all() and (records.loc[records.model == "llava", "cost"] > 0).all()
    # each call's chosen option (or top-1 class) is kept as its answer key, so a cascade may stop on agreement
    clip_rows = (records["status"] == "ok") & records.model.str.startswith("clip")
    assert records.loc[clip_rows, "answer"].str.fullmatch(r"\d+").all()
    assert records.loc[records["status"] != "ok", "answer"].isna().all()
    n_cells = len(list((tmp_path / "grid" / "records").glob("*.parquet")))
    r = runner.invoke(app, ["grid", "run", str(grid), "--no-progress"])  # resumable: nothing left to do
    assert r.exit_code == 0 and "grid:" not in r.stderr and n_cells == 10

    r = runner.invoke(app, ["route", "build", str(tmp_path / "grid" / "records.parquet"), "--out", str(tmp_path / "table")])
    assert r.exit_code == 0, r.output
    assert "76 rows x 4 models" in r.stdout  # (30 + 8) tasks x 2 prompt variants
    # llava was measured under both prompts: a cascade may stop when they agree (one vote per task, two calls)
    from visroute.router.data.table import RoutingTable
    from visroute.router.decide.variants import table_consensus

    table = RoutingTable.load(tmp_path / "table")
    votes, j = table_consensus(table), table.models.index("llava")
    others = [table.models.index(m) for m in ("clip-a", "clip-b", "llava+llama")]
    assert np.isnan(votes.share[:, others]).all()  # one prompt each ("*"): nothing to vote with
    ran = np.isfinite(table.success[:, j])
    assert ran.any() and (votes.calls[ran, j] <= 2).all() and set(np.round(votes.share[ran, j], 6)) <= {0.0, 0.5, 1.0}
    for d, t in {(d, t) for d, t in zip(table.dataset[ran], table.task_id[ran])}:
        rows = (table.dataset == d) & (table.task_id == t) & ran
        np.testing.assert_allclose(votes.cost[rows, j], table.cost[rows, j].sum(), rtol=1e-6)  # both calls paid
        assert (votes.calls[rows, j] == rows.sum()).all()
    r = runner.invoke(app, ["route", "train", str(tmp_path / "table"), "--router", "mlp",
                            "--out", str(tmp_path / "router"), "--target-share", "0.5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["route", "eval", str(tmp_path / "table"), "--router", str(tmp_path / "router"),
                            "--out", str(tmp_path / "report"), "--part", "train"])
    assert r.exit_code == 0, r.output
    assert "always llava+llama" in r.stdout and "knn baseline" in r.stdout
    png = tmp_path / "report" / "curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(rep["single_models"]) == {"clip-a", "clip-b", "llava", "llava+llama"} and rep["oracle"]["accuracy"] >= max(
        s["accuracy"] for s in rep["single_models"].values())

    img = shared_data / "imagenet-sample" / "n02123045_tabby.JPEG"
    r = runner.invoke(app, ["route", str(img), "--task", "Which animal is this?", "--options", "dog,cat,horse",
                            "--router", str(tmp_path / "router"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["chosen"] in rep["single_models"] and set(out["predicted_accuracy"]) == set(rep["single_models"])
    assert out["answer"] in (None, "dog", "cat", "horse") and "parse_rule" in out

    # the same table as a cascade: trained, evaluated on the same curves, and routed call by call
    r = runner.invoke(app, ["route", "train", str(tmp_path / "table"), "--router", "knn", "--strategy", "cascade",
                            "--out", str(tmp_path / "cascade")])
    assert r.exit_code == 0, r.output
    assert "strategy cascade: chain" in r.stdout
    r = runner.invoke(app, ["route", "eval", str(tmp_path / "table"), "--router", str(tmp_path / "cascade"),
                            "--out", str(tmp_path / "report-c"), "--part", "train"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "report-c" / "report.json").read_text())
    assert rep["strategy"]["kind"] == "cascade" and {"cascade", "ensemble", "zero_router"} <= set(rep["aiq"])
    chain = [rep["models"][j] for j in rep["strategy"]["chain"]]
    r = runner.invoke(app, ["route", str(img), "--task", "Which animal is this?", "--options", "dog,cat,horse",
                            "--router", str(tmp_path / "cascade"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    calls = out["calls"]
    assert [c["model"] for c in calls] == chain[: len(calls)] and out["chosen"] == calls[-1]["model"]
    assert out["cost"] == sum(c["cost"] for c in calls)  # every call paid for, nothing else
    t = rep["strategy"]["threshold"]
    assert all(c["confidence"] < t for c in calls[:-1])
    assert calls[-1]["confidence"] >= t or len(calls) == len(chain)
