"""`hierarchy` as a bundle strategy: a family of models first, then the model within it. Trained by
`route train --strategy hierarchy`, scored by `route eval` on the same curves, executed through the one decision
(`RouterBundle.choose`) by `route`, `Router.route` and the proxy, and its cost is the one call it makes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from visroute.cli import app
from visroute.router.decide.hierarchy import cost_tiers, family_targets, hierarchy_picks
from visroute.router.decide.rules import apply_rule, decision_rule

FIXTURES = Path(__file__).parent / "fixtures" / "routerbench"


def test_cost_tiers_split_at_the_widest_log_gap_and_family_targets_are_any_success():
    assert cost_tiers(np.array([1.0, 1.5, 3.0, 40.0, 50.0])) == ["cheap", "cheap", "cheap", "dear", "dear"]
    assert cost_tiers(np.array([2.0, 2.0])) == ["all", "all"]
    S = np.array([[0, 1, 0], [0, 0, 1], [np.nan, np.nan, 0]], np.float64)
    fam = ["a", "a", "b"]
    np.testing.assert_array_equal(family_targets(S, fam), [[1, 0], [0, 1], [np.nan, 0]])


def test_hierarchy_picks_the_family_then_the_model_by_hand():
    costs = np.array([1.0, 2.0, 10.0, 12.0])
    fam = ["cheap", "cheap", "dear", "dear"]
    pf = np.array([[0.9, 0.95], [0.3, 0.9]])  # columns: sorted names (cheap, dear)
    p = np.array([[0.5, 0.8, 0.7, 0.9], [0.2, 0.3, 0.85, 0.8]])
    # lambda 0.01: family utilities cheap 0.9-0.015, dear 0.95-0.11 -> cheap; within it 0.8-0.02 > 0.5-0.01 -> model 1
    # task 2: cheap 0.3-0.015, dear 0.9-0.11 -> dear; within it 0.85-0.10 > 0.8-0.12 -> model 2
    assert hierarchy_picks(pf, p, costs, fam, 0.01).tolist() == [1, 2]
    assert hierarchy_picks(pf, p, costs, fam, 1.0).tolist() == [0, 0]  # dear enough: the cheapest family and model


def test_the_decision_rule_shrinks_and_never_picks_a_model_off_the_chain():
    costs = np.array([1.0, 5.0, 10.0])
    rule = decision_rule(np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]], np.float64), costs)
    assert rule["chain"] == [0, 2] and rule["prior"] == [0.5, 0.25, 1.0]  # model 1: dearer and worse than model 0
    p = apply_rule(np.array([[0.1, 0.9, 0.6]]), rule, costs)
    np.testing.assert_allclose(p[0, [0, 2]], [0.3, 0.8])  # halfway to each prior
    assert p[0, 1] < p[0, 0]  # capped below the cheaper chain model: never chosen
    assert apply_rule(np.array([[0.1, 0.9, 0.6]]), None, costs).tolist() == [[0.1, 0.9, 0.6]]


def test_a_hierarchy_plan_makes_one_call_and_its_cost_adds_up():
    from visroute.router.decide.plan import outcomes, plan, run_plan

    strategy = {"kind": "hierarchy", "families": ["cheap", "cheap", "dear"]}
    costs = np.array([1.0, 2.0, 10.0])
    p = plan(strategy, np.array([0.4, 0.5, 0.95]), costs, 0.001, np.array([0.5, 0.95]))
    assert p == {"kind": "hierarchy", "calls": [2]}
    made = []

    def call(j):
        made.append(j)
        return SimpleNamespace(call_cost=float(costs[j])), None

    res = run_plan(p, np.array([0.4, 0.5, 0.95]), call)
    assert made == [2] and res["model"] == 2 and sum(c["prediction"].call_cost for c in res["calls"]) == 10.0
    S, C = np.array([[0, 1, 1], [1, 0, 0]], np.float64), np.array([[1.0, 2.5, 9.0], [1.5, 2.0, 11.0]])
    out = outcomes(strategy, np.array([[0.4, 0.5, 0.95], [0.9, 0.2, 0.1]]), S, C, costs, 0.001,
                   family_proba=np.array([[0.5, 0.95], [0.9, 0.1]]))
    assert out["model"].tolist() == [2, 0] and out["cost"].tolist() == [9.0, 1.5]  # each task: its one call
    assert out["success"].tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hier")
    runner = CliRunner()
    files = [str(FIXTURES / "arc_challenge.csv"), str(FIXTURES / "mbpp.csv")]
    for argv in (["route", "import", "routerbench", *files, "--out", str(tmp / "rb.parquet")],
                 ["route", "build", str(tmp / "rb.parquet"), "--out", str(tmp / "table")]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["route", "train", str(tmp / "table"), "--router", "logistic", "--strategy", "hierarchy",
                            "--out", str(tmp / "router")])
    assert r.exit_code == 0, r.output
    return tmp, r.stdout


def test_train_eval_and_route_a_hierarchy_bundle(trained, monkeypatch):
    from visroute.api import Router
    from visroute.router.decide.bundle import RouterBundle
    from visroute.serve.proxy import decide

    tmp, train_out = trained
    assert "strategy hierarchy: families cheap:" in train_out and "dear:" in train_out
    runner = CliRunner()
    r = runner.invoke(app, ["route", "eval", str(tmp / "table"), "--router", str(tmp / "router"),
                            "--out", str(tmp / "report")])
    assert r.exit_code == 0, r.output
    assert "hierarchy (calibrated)" in r.stdout
    rep = json.loads((tmp / "report" / "report.json").read_text())
    assert rep["strategy"]["kind"] == "hierarchy" and {"hierarchy", "router", "zero_router"} <= set(rep["aiq"])
    bundle = RouterBundle.load(tmp / "router")
    assert bundle.family_router is not None and set(bundle.strategy["families"]) == {"cheap", "dear"}
    text = "Write a python function to reverse the words in a sentence."
    d = bundle.choose(text)
    assert d.plan == {"kind": "hierarchy", "calls": [d.chosen]}
    r = runner.invoke(app, ["route", "ask", "--task", text, "--router", str(tmp / "router"), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["strategy"] == "hierarchy" and out["plan"] == [d.chosen] and out["chosen"] == d.chosen
    assert Router(bundle).route(None, text, [], run=False)["chosen"] == d.chosen
    chosen, _ = decide(SimpleNamespace(runtime=None), SimpleNamespace(bundle=bundle), text, None, None)
    assert chosen == d.chosen  # the proxy calls the model the hierarchy picked
    # run end to end with a stand-in pipeline: one call, and the reported cost is that call's
    import visroute.pipeline.build as build
    from visroute.router.decide.run import route_task

    spec = SimpleNamespace(to_dict=lambda: {"name": "stand-in"})
    monkeypatch.setattr(RouterBundle, "pipeline_spec", lambda self, m, variant=None: spec)
    price = {m: 0.001 * (i + 1) for i, m in enumerate(bundle.models)}
    called = []

    class Stub:
        def __init__(self, m):
            self.m = m

        def predict(self, tasks):
            called.append(self.m)
            return [SimpleNamespace(error=None, predicted=0, raw_answer="A", parse_rule="stub", latency_s=0.1,
                                    call_cost=price[self.m], cached=False, option_scores=None)]

    models = iter(d.plan["calls"])
    monkeypatch.setattr(build, "build_pipeline", lambda s, runtime=None: Stub(next(models)))
    res = route_task(bundle, None, text, ["yes", "no"])
    assert called == [d.chosen] and res["cost"] == price[d.chosen] == sum(c["cost"] for c in res["calls"])


def test_a_malformed_hierarchy_or_decision_rule_is_refused(trained, tmp_path):
    import shutil

    from visroute.router.learn.persist import BundleError
    from visroute.router.decide.bundle import RouterBundle

    tmp, _ = trained
    bundle = RouterBundle.load(tmp / "router")
    assert bundle.decision["shrink"] == 0.5 and len(bundle.decision["prior"]) == len(bundle.models)
    damages = (lambda i: i["strategy"].update(families=["cheap"]), lambda i: i.update(family_router=None),
               lambda i: i["decision"].update(shrink=2.0), lambda i: i["decision"].update(chain=[99]),
               lambda i: i["decision"].update(prior=[0.5]))
    for k, damage in enumerate(damages):
        d = tmp_path / f"bad{k}"
        shutil.copytree(tmp / "router", d)
        info = json.loads((d / "router.json").read_text())
        damage(info)
        (d / "router.json").write_text(json.dumps(info))
        with pytest.raises(BundleError):
            RouterBundle.load(d)
