"""Public routing data (the RouteLLM fixture) through `route import`, `route build` (data-quality report, dedup)
and `route eval`, with an LLM-as-router answering from a loopback OpenAI-compatible stub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.openai_stub import StubServer
from visroute.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "routellm"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
runner = CliRunner()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("routellm") / "records.parquet"
    r = runner.invoke(app, ["route", "import", "routellm", str(FIXTURE), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "gsm8k: 36 tasks, 72 records (4 contaminated dropped)" in r.stdout
    assert "mt-bench: 9 tasks, 18 records (3 contaminated dropped)" in r.stdout
    return out


def test_import_turns_released_outcomes_into_records(records):
    t = pq.read_table(records).to_pandas()
    assert set(t["model"]) == {STRONG, WEAK} and (t["prompt_variant"] == "*").all()
    import csv

    with (FIXTURE / "routellm/evals/gsm8k/gsm8k_responses.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    g = t[t.dataset == "gsm8k"].set_index(["task_id", "model"])
    assert g.loc[("gsm8k-5", STRONG), "correct"] == (rows[5][STRONG] == "True")
    assert g.loc[("gsm8k-5", WEAK), "task_text"] == rows[5]["prompt"]
    assert "gsm8k-0" not in set(t["task_id"])  # the first prompt is listed as contaminated
    # MT-Bench quality: the mean of the two turns' judge scores / 10
    judged = [j for j in _lines(FIXTURE / "routellm/evals/mt_bench/judgements.jsonl")
              if j["question_id"] == 82 and j["model"] == WEAK]
    row = t[(t.task_id == "mt-bench-82") & (t.model == WEAK)].iloc[0]
    assert len(judged) == 2 and row["quality"] == pytest.approx(np.mean([j["score"] for j in judged]) / 10)
    assert row["dataset"] == "mt-bench/writing" and row["correct"] == (row["quality"] >= 0.8)
    # price per call: $24.7 vs $0.24 per million tokens, 1000 tokens a call
    assert t[t.model == STRONG]["cost"].iloc[0] == pytest.approx(0.0247)
    assert t[t.model == WEAK]["cost"].iloc[0] == pytest.approx(0.00024)


def test_import_rejects_bad_sources_with_one_line(tmp_path):
    r = runner.invoke(app, ["route", "import", "routellm", str(tmp_path)])
    assert r.exit_code == 2 and "is it a RouteLLM checkout" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["route", "import", "vl-routerbench", str(FIXTURE)])
    assert r.exit_code == 2 and "unknown routing data source" in r.output
    r = runner.invoke(app, ["route", "import", "routellm", str(FIXTURE), "--price", "gpt-4=cheap"])
    assert r.exit_code == 2 and "MODEL=USD_PER_MILLION_TOKENS" in r.output


def test_build_reports_data_quality_and_dedup_removes_leaks(records, tmp_path):
    import pyarrow as pa

    t = pq.read_table(records)
    # plant a leak: a copy of every GSM8K task under new ids, so the random split puts copies across splits
    df = t.to_pandas()
    copies = df[df.dataset == "gsm8k"].copy()
    copies["task_id"] = copies["task_id"] + "-copy"
    leaky = tmp_path / "leaky.parquet"
    pq.write_table(pa.Table.from_pandas(pd_concat(df, copies), schema=t.schema, preserve_index=False), leaky)
    r = runner.invoke(app, ["route", "build", str(leaky), "--out", str(tmp_path / "d"), "--split", "sample",
                            "--test-fraction", "0.3", "--dedup"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "d" / "quality.json").read_text())
    nd = rep["near_duplicates"]
    assert nd["checked"] and nd["val"] + nd["test"] > 5 and "near-duplicates of earlier splits" in r.stdout
    assert rep["label_noise"]["flip_rate"] is None  # RouteLLM has one prompt per item
    assert rep["balance"]["models"][STRONG]["train"] > rep["balance"]["models"][WEAK]["train"]
    assert rep["dedup_removed"] == nd["val"] + nd["test"] and f"removed {rep['dedup_removed']} near-dup" in r.stdout
    from visroute.router.data.table import RoutingTable

    clean = RoutingTable.load(tmp_path / "d")
    train_texts = set(clean.text[clean.split == "train"])
    assert not any(x in train_texts for x in clean.text[clean.split != "train"])


def pd_concat(a, b):
    import pandas as pd

    return pd.concat([a, b], ignore_index=True)


def test_label_noise_counts_outcome_flips_across_prompt_variants():
    from visroute.router.data.quality import label_noise
    from visroute.router.data.table import RoutingTable

    n = 4
    t = RoutingTable(["a", "b"], np.array(["d"] * n), np.array(["p1", "p2", "p1", "p2"]), np.array(["1", "1", "2", "2"]),
                     np.array(["x"] * n), np.array([""] * n), np.array([""] * n),
                     np.array([[1, 1], [0, 1], [1, 0], [1, 0]], np.float32), np.ones((n, 2), np.float32),
                     np.ones(n, np.float32), np.array(["train"] * n))
    ln = label_noise(t)
    assert ln["items_with_variants"] == 2 and ln["per_model"] == {"a": 0.5, "b": 0.0} and ln["flip_rate"] == 0.25


def _answer(prompt: str) -> str:
    task = prompt.split("Task (from the dataset")[1]
    return f"I would use {STRONG}." if "$" in task else "Model 2"


def test_llm_router_answers_are_parsed_cached_and_its_calls_are_paid_for(records, tmp_path):
    from visroute.router.evaluate.baselines import evaluate_with_baselines
    from visroute.router.decide.bundle import train_bundle
    from visroute.router.learn.llm_router import LLMRouter, model_cards, parse_choice
    from visroute.router.data.table import build_table, read_records

    assert parse_choice("gpt-4-turbo, not gpt-4", ["gpt-4", "gpt-4-turbo"]) == 1
    assert parse_choice(" 2. ", ["a", "b"]) == 1 and parse_choice("Model 1", ["a", "b"]) == 0
    assert parse_choice("no idea", ["a", "b"]) is None and parse_choice("use model 7", ["a", "b"]) is None
    table = build_table(read_records(records), split_by="sample", test_fraction=0.4, seed=3)
    cards = model_cards(table)
    assert [c.name for c in cards] == table.models and cards[0].price == pytest.approx(0.0247)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai-compatible:*#router": {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}}))
    test = table.part("test")
    with StubServer(default=_answer) as srv:
        srv.script = [("text", "I cannot tell")]
        router = LLMRouter.from_spec(f"openai-compatible:{srv.base_url}#router", cards, prices,
                                     tmp_path / "cache.sqlite", concurrency=1)
        out = router.route(test.text, test.dataset)
        n_requests = len(srv.requests)
        again = router.route(test.text, test.dataset)
        assert len(srv.requests) == n_requests == len(test)  # the second pass is answered from the cache
    assert out["unparsed"] == 1 and out["cached"] == 0 and again["cached"] == len(test) and again["unparsed"] == 1
    expect = np.where(np.char.find(test.text.astype(str), "$") >= 0, table.models.index(STRONG),
                      table.models.index(WEAK))
    np.testing.assert_array_equal(out["picks"][1:], expect[1:])
    assert out["picks"][0] == table.models.index(WEAK)  # unparsed: the cheapest model
    sent = srv.requests[1]["messages"]
    assert sent[0]["role"] == "system" and STRONG in sent[1]["content"] and "price 0.0247 per call" in sent[1]["content"]
    # the router's own call: stub tokens (whitespace words) x the price table's rates, cached or not
    words = len(sent[-1]["content"].split())
    assert again["router_cost"][1] == pytest.approx(out["router_cost"][1])
    assert out["router_cost"][1] == pytest.approx(words * 1000e-6 + len(_answer(sent[-1]["content"]).split()) * 2000e-6)

    bundle = train_bundle(table, "knn", target_share=0.5)
    with StubServer(default=_answer) as srv:
        router = LLMRouter.from_spec(f"openai-compatible:{srv.base_url}#router", cards, prices, tmp_path / "c2.sqlite")
        rep = evaluate_with_baselines(table, bundle, "test", router)
    llm = rep["llm_router"]
    assert llm["cost"] == pytest.approx(llm["cost_models"] + llm["cost_router_calls"]) and llm["cost_router_calls"] > 0
    assert set(llm["at_equal_share"]) == {"router", "knn", "dataset_prior"}
    for pt in llm["at_equal_share"].values():
        assert pt["x"] == pytest.approx(llm["x"])
    assert set(rep["routing_metrics"]) == {"router", "random", "oracle", "knn", "dataset_prior"}
    assert rep["routing_metrics"]["random"]["apgr"] == pytest.approx(0.5)
    assert rep["calibration"]["target_share"] == 0.5 and rep["calibration"]["realised_share"] is not None
