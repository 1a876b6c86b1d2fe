"""A cascade that stops when the models' answers agree: RouterBench records carry each model's answer, the routing
table keeps it (``answer::MODEL``), training picks agreement as the cascade's confidence, evaluation and
``run_plan`` compute it the same way, and the cost counts every call."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from visroute.router.data.routerbench import answer_key, read_routerbench
from visroute.router.data.table import RoutingTable, build_table
from visroute.router.decide.plan import fit_strategy, outcomes, plan, run_plan
from visroute.router.decide.strategies import agreement_confidence, cascade


def test_answer_keys_and_agreement_by_hand():
    assert answer_key("['C\\n']") == "C" and answer_key("['d']") == "D" and answer_key(None) is None
    assert answer_key("def f(x):\n    return x") == "DEF F(X):"
    A = np.array([["A", "A", "B"], ["A", "B", "B"], ["", "C", "C"]], dtype=object)
    base = np.full((3, 3), 0.1)
    conf = agreement_confidence(A, [0, 1, 2], base)
    # stage 1: agrees with stage 0 (task 0), not (task 1), stage 0 gave no answer (task 2: base)
    np.testing.assert_allclose(conf[:, 1], [1.0, 0.0, 0.1])
    np.testing.assert_allclose(conf[:, 2], [0.0, 0.5, 1.0])  # share of the earlier answers it agrees with
    np.testing.assert_allclose(conf[:, 0], 0.1)  # the first stage keeps the router's confidence
    S = np.array([[1, 1, 1], [0, 0, 1], [0, 1, 1]], np.float64)
    C = np.tile([1.0, 3.0, 20.0], (3, 1))
    out = cascade(S, C, conf, [0, 1, 2], 0.9)
    assert out["model"].tolist() == [1, 2, 2]  # task 2: stage 1 has no earlier answer to agree with (0.1 < 0.9)
    assert out["cost"].tolist() == [4.0, 24.0, 24.0]  # every call paid
    assert out["success"].tolist() == [1.0, 1.0, 1.0]


def _csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    truth = rng.choice(list("ABCD"), n)
    rows = {"sample_id": [f"s{i}" for i in range(n)], "prompt": [f"['Question {i}?']" for i in range(n)],
            "eval_name": ["arc"] * n}
    for m, acc, cost in (("cheap", 0.7, 1.0), ("mid", 0.8, 2.0), ("dear", 0.95, 30.0)):
        right = rng.random(n) < acc
        wrong = [chr(ord("A") + (ord(t) - ord("A") + int(k)) % 4) for t, k in zip(truth, rng.integers(1, 4, n))]
        ans = np.where(right, truth, wrong)
        rows[m], rows[f"{m}|total_cost"] = right.astype(float), [cost] * n
        rows[f"{m}|model_response"] = [f"['{a}\\n']" for a in ans]
    path = tmp_path / "rb.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_answers_travel_from_records_to_the_table_and_a_calibrated_cascade(tmp_path):
    records, _ = read_routerbench([_csv(tmp_path)])
    table = build_table(records, split_by="sample", val_fraction=0.5, test_fraction=0.0)
    assert set(np.unique(table.answer)) <= set("ABCD") and (table.answer != "").all()
    table.save(tmp_path / "t")
    back = RoutingTable.load(tmp_path / "t")
    assert (back.answer == table.answer).all()  # saved as answer::MODEL columns
    val, train = table.part("val"), table.part("train")
    proba = np.tile(np.nanmean(train.success, axis=0), (len(val), 1))  # a router that knows nothing per task
    costs = train.model_costs()
    # within 20 per task: only cheap+mid agreeing, else the dear model, beats the cheap model alone on validation
    st = fit_strategy("cascade", proba, val.success, val.cost, costs, train.success, 0.0, target_cost=20.0,
                      answers=val.answer)
    assert st["confidence"] == "agreement" and len(st["chain"]) == 3  # the middle model stops on agreement
    assert st["chain"] == sorted(st["chain"], key=lambda j: costs[j])  # cheapest first
    assert outcomes(st, proba, val.success, val.cost, costs, 0.0, answers=val.answer)["cost"].mean() <= 20.0
    out = outcomes(st, proba, val.success, val.cost, costs, 0.0, answers=val.answer)
    # cost adds up call by call: each task paid every stage up to the one that answered
    pos = np.array([st["chain"].index(m) for m in out["model"]])
    paid = np.array([val.cost[i, st["chain"][: p + 1]].sum() for i, p in enumerate(pos)])
    np.testing.assert_allclose(out["cost"], paid)
    # without answers the same call falls back to the router's predicted success
    assert fit_strategy("cascade", proba, val.success, val.cost, costs, train.success, 0.0,
                        target_cost=20.0)["confidence"] == "router"


def test_run_plan_stops_when_the_answers_agree_and_pays_each_call():
    strategy = {"kind": "cascade", "chain": [0, 1, 2], "threshold": 0.9, "confidence": "agreement"}
    p = plan(strategy, np.array([0.2, 0.3, 0.9]), np.array([1.0, 3.0, 20.0]), 0.0)
    assert p["confidence"] == "agreement"
    price = [1.0, 3.0, 20.0]

    def run(answers):
        made = []

        def call(j):
            made.append(j)
            return SimpleNamespace(predicted=answers[j], call_cost=price[j]), None

        res = run_plan(p, np.array([0.2, 0.3, 0.9]), call)
        return made, res, sum(c["prediction"].call_cost for c in res["calls"])

    made, res, cost = run({0: 2, 1: 2, 2: 1})
    assert made == [0, 1] and res["model"] == 1 and cost == 4.0  # the second answer agrees with the first
    made, res, cost = run({0: 2, 1: 3, 2: 3})
    assert made == [0, 1, 2] and res["model"] == 2 and cost == 24.0  # they differ: escalate to the last stage
