"""A cascade that stops when one model's prompt variants agree (self-consistency): the vote by hand, the table's
votes taken per task across its variant rows, training choosing it where it separates right from wrong, the
cost of every variant's call, and ``route_task`` calling each variant and keeping the vote's answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from visroute.heads.vlm import TaskPrediction
from visroute.router.data.table import build_table
from visroute.router.decide.plan import cascade_points, fit_strategy, outcomes
from visroute.router.decide.variants import (consensus_arrays, model_variants, part_consensus, table_consensus,
                                             variant_stage_arrays, variant_vote)


def test_the_vote_by_hand():
    assert variant_vote(["1", "1", "2"]) == (0, pytest.approx(2 / 3))
    assert variant_vote([None, "2", "1"]) == (1, pytest.approx(1 / 3))  # a tie: the earliest variant's answer
    assert variant_vote([0, 3, 3, None]) == (1, 0.5)  # an unparsable answer counts, and agrees with nothing
    assert variant_vote([None, None]) == (0, 0.0)
    assert model_variants({"vlm": {"mcq-text": {}, "mcq": {}}, "clip": {"*": {}}, "one": {"mcq": {}}}, "vlm") == \
        ["mcq", "mcq-text"]
    assert model_variants({"clip": {"*": {}}}, "clip") == [] and model_variants({}, "x") == []


def test_consensus_arrays_by_hand():
    # rows (task, variant), out of order: the tie-break follows the variant's name, not the row's position
    group = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    prompt = np.array(["c", "a", "b", "b", "a", "c", "a", "b"])
    answers = np.array([["", "2"], ["", "1"], ["", "2"], ["", "1"], ["", "3"], ["", ""], ["", "1"], ["", "0"]],
                       dtype=object)
    success = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [0, 0], [0, 0], [1, 1], [1, np.nan]], np.float64)
    cost = np.array([[1, 2], [1, 3], [1, 4], [1, 5], [1, 6], [1, 7], [1, 8], [1, np.nan]], np.float64)
    c = consensus_arrays(group, prompt, answers, success, cost, np.array([False, True]))
    assert np.isnan(c.share[:, 0]).all() and (c.calls[:, 0] == 0).all()  # model 0 has no variants
    # task 0: "2" twice of three (variants c, b); its success is variant b's (0); every call paid: 2+3+4
    np.testing.assert_allclose(c.share[:3, 1], 2 / 3)
    np.testing.assert_allclose(c.success[:3, 1], 0.0)
    np.testing.assert_allclose(c.cost[:3, 1], 9.0)
    # task 1: a tie of "1" (b) and "3" (a) with one unparsable (c): the earliest variant, a, answers "3" (wrong)
    np.testing.assert_allclose(c.share[3:6, 1], 1 / 3)
    np.testing.assert_allclose(c.success[3:6, 1], 0.0)
    np.testing.assert_allclose(c.cost[3:6, 1], 18.0)
    assert (c.calls[:6, 1] == 3).all()
    # task 2: variant b never ran (a failed call, dropped): one answer of one call
    np.testing.assert_allclose(c.share[6, 1], 1.0)
    assert c.success[6, 1] == 1.0 and c.cost[6, 1] == 8.0 and c.calls[6, 1] == 1 and np.isnan(c.share[7, 1])


def _records(n_tasks: int = 120, seed: int = 0) -> pa.Table:
    """A grid's records: a cheap VLM measured under three prompt variants whose agreement tells when it is right,
    a prompt-agnostic dear model ("*"), one answer key per call."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(n_tasks):
        truth = int(rng.integers(4))
        easy = rng.random() < 0.6  # on easy tasks the variants agree on the right answer
        for v in ("mcq", "mcq-text", "mcq-short"):
            ans = truth if easy or rng.random() < 0.3 else int(rng.integers(4))
            rows.append(("vlm", v, t, ans == truth, 1.0, str(ans)))
        rows.append(("dear", "*", t, rng.random() < 0.95, 20.0, str(truth)))
    model, variant, task, correct, cost, answer = zip(*rows)
    return pa.table({"dataset": ["sqa"] * len(rows), "prompt_variant": list(variant),
                     "task_id": [f"q{t}" for t in task], "task_text": [f"question {t}" for t in task],
                     "model": list(model), "correct": list(correct), "cost": list(cost), "answer": list(answer),
                     "status": ["ok"] * len(rows), "pipeline": [_spec(m, v) for m, v in zip(model, variant)]})


def _spec(model: str, variant: str) -> str:
    spec = {"name": model, "head": "vlm", "vlm": "random-tiny:llava"}
    return json.dumps(spec | ({"prompt": variant} if variant != "*" else {}))


def test_table_votes_and_a_calibrated_variants_cascade():
    table = build_table(_records(), split_by="sample", val_fraction=0.5, test_fraction=0.0)
    votes = table_consensus(table)
    vlm, dear = table.models.index("vlm"), table.models.index("dear")
    assert np.isnan(votes.share[:, dear]).all()  # prompt-agnostic: broadcast to every variant row, never voted
    assert (votes.calls[:, vlm] == 3).all() and np.allclose(votes.cost[:, vlm], 3.0)  # three calls of cost 1
    # the vote is the task's, whichever part a variant row fell in
    by_task = {}
    for t, s in zip(table.task_id, votes.share[:, vlm]):
        by_task.setdefault(t, set()).add(float(s))
    assert all(len(s) == 1 for s in by_task.values())
    assert set(np.round(votes.share[:, vlm], 6)) <= {round(1 / 3, 6), round(2 / 3, 6), 1.0}

    val, train = table.part("val"), table.part("train")
    val_votes = part_consensus(table, "val")
    assert len(val_votes.share) == len(val)
    costs = train.model_costs()
    proba = np.tile(np.nanmean(train.success, axis=0), (len(val), 1))  # a router that knows nothing per task
    st = fit_strategy("cascade", proba, val.success, val.cost, costs, train.success, 0.0, target_cost=12.0,
                      answers=val.answer, consensus=val_votes)
    assert st["confidence"] == "variants" and st["chain"] == [vlm, dear]
    out = outcomes(st, proba, val.success, val.cost, costs, 0.0, answers=val.answer, consensus=val_votes)
    assert out["cost"].mean() <= 12.0
    # cost adds up call by call: the three variants of the vlm, then the dear model where it escalated
    np.testing.assert_allclose(out["cost"], np.where(out["model"] == vlm, 3.0, 23.0))
    # a stop keeps the vote's answer: right exactly where the variants' plurality was right
    stopped = out["model"] == vlm
    np.testing.assert_array_equal(out["success"][stopped], val_votes.success[stopped, vlm])
    # better than the cheap model alone, cheaper than the dear model alone
    assert out["success"].mean() > np.nanmean(val.success[:, vlm]) and out["cost"].mean() < 20.0
    # without votes the same call has no variants to stop on
    modes = {m for _, m, _, _ in cascade_points([vlm, dear], proba, val.success, val.cost, val.score, val.answer)}
    assert "variants" not in modes


def test_variant_stage_arrays_leave_the_last_stage_and_unvoted_rows_alone():
    c = consensus_arrays(np.array([0, 0, 1]), np.array(["a", "b", "a"]),
                         np.array([["1", "1"], ["1", "2"], ["0", "0"]], dtype=object),
                         np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), np.ones((3, 2)), np.array([True, True]))
    conf, s, cost, calls = variant_stage_arrays([0, 1], np.full((3, 2), 0.4), np.zeros((3, 2)), np.ones((3, 2)), c)
    np.testing.assert_allclose(conf[:, 0], [1.0, 1.0, 1.0]) and np.testing.assert_allclose(conf[:, 1], 0.4)
    np.testing.assert_allclose(cost[:, 0], [2.0, 2.0, 1.0]) and np.testing.assert_allclose(cost[:, 1], 1.0)
    np.testing.assert_allclose(s[:, 1], 0.0)  # the last stage answers once, with the row's own outcome
    np.testing.assert_allclose(calls, [[2, 1], [2, 1], [1, 1]])  # task 0's two variants; task 1 ran once


class _Pipe:
    """A pipeline whose answer depends on its prompt variant; every call is logged and costs 1."""

    def __init__(self, spec, answers, log):
        self.spec, self.answers, self.log = spec, answers, log

    def predict(self, tasks):
        self.log.append((self.spec.name, self.spec.prompt))
        a = self.answers[(self.spec.name, self.spec.prompt)]
        return [TaskPrediction("query", a, "letter", str(a), latency_s=0.5, call_cost=1.0)]


@pytest.mark.parametrize("answers,calls,kept", [
    ({"mcq": 1, "mcq-short": 1, "mcq-text": 2}, ["vlm"] * 3, "vlm"),  # 2 of 3 agree >= 0.6: the vlm's vote answers
    ({"mcq": 0, "mcq-short": 1, "mcq-text": 2}, ["vlm"] * 3 + ["dear"], "dear"),  # no agreement: escalate
])
def test_route_task_calls_every_variant_and_keeps_the_vote(monkeypatch, answers, calls, kept):
    from visroute.pipeline.spec import PipelineSpec
    from visroute.router.decide import run

    specs = {("vlm", v): PipelineSpec.from_dict({"name": "vlm", "head": "vlm", "vlm": "random-tiny:llava",
                                                 "prompt": v}) for v in answers}
    specs[("dear", None)] = PipelineSpec.from_dict({"name": "dear", "head": "vlm", "vlm": "random-tiny:llava"})
    replies = {("vlm", v): a for v, a in answers.items()} | {("dear", specs[("dear", None)].prompt): 1}
    log = []
    monkeypatch.setattr("visroute.pipeline.build.build_pipeline", lambda spec, runtime=None: _Pipe(spec, replies, log))
    decision = SimpleNamespace(chosen="vlm", lam=0.0, predicted_accuracy={"vlm": 0.9, "dear": 0.95},
                               expected_cost={"vlm": 1.0, "dear": 20.0},
                               plan={"kind": "cascade", "calls": ["vlm", "dear"], "threshold": 0.6,
                                     "confidence": "variants"})
    bundle = SimpleNamespace(models=["vlm", "dear"], strategy={"kind": "cascade", "confidence": "variants"},
                             pipelines={"vlm": {v: {} for v in answers}, "dear": {"*": {}}},
                             choose=lambda *a, **k: decision,
                             pipeline_spec=lambda m, v=None: specs[(m, v if m == "vlm" else None)])
    out = run.route_task(bundle, None, "Which one?", ["a", "b", "c"])
    assert [m for m, _ in log] == calls
    assert [p for m, p in log if m == "vlm"] == ["mcq", "mcq-short", "mcq-text"]  # every variant, in sorted order
    assert out["chosen"] == kept and out["cost"] == len(calls)  # every call paid, nothing else
    first = out["calls"][0]
    assert first["model"] == "vlm" and first["cost"] == 3.0 and first["variants"] == ["mcq", "mcq-short", "mcq-text"]
    assert first["confidence"] == pytest.approx(max(np.unique(list(answers.values()), return_counts=True)[1]) / 3)
    if kept == "vlm":
        assert out["answer"] == "b" and first["kept"] == "mcq"


def test_route_train_eval_and_route_a_variants_cascade_from_the_cli(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from visroute.cli import app

    pq.write_table(_records(n_tasks=160, seed=1), tmp_path / "records.parquet")
    runner = CliRunner()
    r = runner.invoke(app, ["route", "build", str(tmp_path / "records.parquet"), "--out", str(tmp_path / "table"),
                            "--split", "sample"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["route", "train", str(tmp_path / "table"), "--router", "logistic", "--strategy", "cascade",
                            "--target-cost", "12", "--out", str(tmp_path / "cascade")])
    assert r.exit_code == 0, r.output
    assert "strategy cascade: chain vlm -> dear" in r.stdout and "prompt variants" in r.stdout
    r = runner.invoke(app, ["route", "eval", str(tmp_path / "table"), "--router", str(tmp_path / "cascade"),
                            "--out", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    st = rep["strategy"]
    assert st["confidence"] == "variants" and 3.0 <= st["cost"] <= 23.0  # the vlm's three calls, at least
    assert st["accuracy"] > rep["single_models"]["vlm"]["accuracy"]
    # calls per task: three variants, plus the dear model where the cascade escalated (a call costs 1 or 20)
    assert st["calls_per_task"] == pytest.approx(3 + (st["cost"] - 3) / 20)
    assert "calls per task" in r.stdout
    # routed from the CLI: the vlm is asked under its three prompts; they agree, so it answers
    replies = {("vlm", v): 2 for v in ("mcq", "mcq-text", "mcq-short")} | {("dear", "mcq"): 0}
    log = []
    monkeypatch.setattr("visroute.pipeline.build.build_pipeline", lambda spec, runtime=None: _Pipe(spec, replies, log))
    r = runner.invoke(app, ["route", "ask", "--task", "question 3", "--options", "a,b,c",
                            "--router", str(tmp_path / "cascade")])
    assert r.exit_code == 0, r.output
    assert log == [("vlm", "mcq"), ("vlm", "mcq-short"), ("vlm", "mcq-text")]
    assert "answer: c" in r.stdout and "called vlm: cost 3, confidence 1.000 (3 prompt variants, kept mcq)" in r.stdout
