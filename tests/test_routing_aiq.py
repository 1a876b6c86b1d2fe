"""RouterBench's AIQ against hand-computed hulls, and shared-prefix detection (what the router embeds)."""

from __future__ import annotations

import numpy as np
import pytest

from visroute.router.evaluate.aiq import aiq_report, hull_area, sweep_outcomes, upper_hull
from visroute.router.data.texts import TextRule, detect_rule, shared_affixes

# 4 tasks x models A (cost 1), B (cost 2), C (cost 5): accuracies 0.25, 0.75, 1.0
SUCCESS = np.array([[1, 1, 1], [0, 1, 1], [0, 1, 1], [0, 0, 1]], np.float64)
COST = np.tile([1.0, 2.0, 5.0], (4, 1))


def test_single_model_hull_by_hand():
    # x = (cost - 1) / (5 - 1): A at 0, B at 0.25, C at 1; B lies above the chord A-C, so the hull is A-B-C
    assert hull_area([0, 0.25, 1], [0.25, 0.75, 1.0]) == pytest.approx(0.25 * (0.25 + 0.75) / 2 + 0.75 * (0.75 + 1) / 2)
    # a point under the chord is not on the hull: area of the straight line A-C
    assert hull_area([0, 0.5, 1], [0.2, 0.3, 1.0]) == pytest.approx((0.2 + 1.0) / 2)
    # dearer and worse: the hull stays flat after the best point
    hx, hy = upper_hull([0, 0.5, 1], [0.5, 0.9, 0.6])
    assert list(hx) == [0, 0.5] and list(hy) == [0.5, 0.9]
    assert hull_area([0, 0.5, 1], [0.5, 0.9, 0.6]) == pytest.approx(0.5 * 1.4 / 2 + 0.5 * 0.9)


def test_aiq_report_zero_router_and_a_router_that_always_picks_one_model():
    always_b = sweep_outcomes(np.full((1, 4), 1), SUCCESS, COST)
    rep = aiq_report({"always_b": always_b}, SUCCESS, COST, n_boot=50)
    z = rep["zero_router"]
    assert z["aiq"] == pytest.approx(0.78125)
    assert z["accuracy_at_best_cost"] == pytest.approx(1.0) and z["cost_to_best_accuracy"] == pytest.approx(1.0)
    b = rep["always_b"]
    assert b["aiq"] == pytest.approx(0.75 * (1 - 0.25))  # flat from x = 0.25, nothing to its left
    assert b["accuracy_at_best_cost"] == pytest.approx(0.75) and b["cost_to_best_accuracy"] is None
    assert b["gain"] == pytest.approx(0.5625 - 0.78125)
    # the oracle: task 1 on A, tasks 2-3 on B, task 4 on C = accuracy 1 at cost 2.5 (x = 0.375), and cheaper points
    o = rep["oracle"]
    assert o["aiq"] > z["aiq"] and o["cost_to_best_accuracy"] == pytest.approx(2.5 / 5)
    lo, hi = z["aiq_ci"]
    assert lo <= z["aiq"] <= hi


def test_a_cascade_pays_for_every_call_on_the_aiq_axis():
    from visroute.router.decide.strategies import cascade

    conf = np.array([[0.9, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.95, 0, 0]])
    out = cascade(SUCCESS, COST, conf, [0, 2], threshold=0.5)
    # tasks 2 and 3 escalate: they pay A then C
    assert list(out["cost"]) == [1.0, 6.0, 6.0, 1.0]
    assert list(out["model"]) == [0, 2, 2, 0]
    assert list(out["success"]) == [1, 1, 1, 0]


def test_shared_prefix_and_suffix_are_found_and_stripped():
    shot = "Example: What is 2+2?\nA) 3\nB) 4\nAnswer: B\n\n" * 3
    tail = "\nPrint only a single choice from A or B or C or D without explanation."
    texts = [f"{shot}Q{i}: which planet is number {i}?{tail}" for i in range(5)]
    pre, suf = shared_affixes(texts)
    assert pre == shot  # "Q" is common too, but a prefix stops at a word boundary
    assert suf == tail  # "?" is common too, but a suffix starts at a word boundary
    rule = detect_rule(texts + ["short and unique"], ["arc"] * 5 + ["other"])
    assert set(rule.affixes) == {"arc"}
    stripped = rule.apply(texts[3])
    assert "planet is number 3" in stripped and "Example" not in stripped
    assert TextRule.from_dict(rule.to_dict()).apply(texts[3]) == stripped  # what the bundle saves, it applies
    assert rule.apply("an unrelated query") == "an unrelated query"


def test_no_affix_when_texts_differ_early_or_would_be_emptied():
    assert shared_affixes(["Write a function to add", "Write a function to sort", "Find the max"]) == ("", "")
    same = ["the very same long text shared by every single row of it"] * 3
    assert shared_affixes(same) == ("", "")  # one distinct text: nothing to tell apart, and nothing stripped to ""


def test_a_plan_runs_call_by_call_and_its_cost_adds_up():
    from types import SimpleNamespace

    from visroute.router.decide.plan import plan, run_plan

    strategy = {"kind": "cascade", "chain": [0, 1, 2], "threshold": 0.8}
    p = plan(strategy, np.array([0.5, 0.7, 0.9]), np.array([1.0, 2.0, 5.0]), 0.0)
    assert p["calls"] == [0, 1, 2]
    own = {0: 0.3, 1: 0.85, 2: 0.99}  # the models' own confidence: the second stage is sure enough
    made = []

    def call(j):
        made.append(j)
        return SimpleNamespace(call_cost=[1.0, 2.0, 5.0][j]), own[j]

    res = run_plan(p, np.array([0.5, 0.7, 0.9]), call)
    assert made == [0, 1] and res["model"] == 1
    assert sum(c["prediction"].call_cost for c in res["calls"]) == 3.0
    # without own signals the router's predicted success is the confidence
    made.clear()

    def call_without_signal(j):
        made.append(j)
        return None, None

    res = run_plan(p, np.array([0.5, 0.7, 0.9]), call_without_signal)
    assert made == [0, 1, 2] and res["model"] == 2


def test_an_unreachable_target_is_said_with_its_realised_value():
    from visroute.router.decide.rules import unreachable

    msg = unreachable(None, 0.3, 0.01, 0.0, "big", rows=100)  # lambda 0 already sends nothing to the heavy model
    assert "target share 0.300 of big cannot be reached" in msg and "realised 0.000" in msg
    assert unreachable(None, 0.3, 0.01, 0.29, "big", rows=100) is None
    assert "cheapest operating point costs 0.5" in unreachable(0.1, None, 0.5, 0.0, "big", rows=100)
    assert unreachable(0.6, None, 0.5, 0.0, "big", rows=100) is None


def test_apgr_undefined_is_explained_when_the_best_model_is_the_cheapest():
    from visroute.cli.route import _metric_lines

    ref = {"cheap": "tiny", "best": "tiny", "accuracy_cheap": 0.7, "accuracy_best": 0.7, "axis": "normalised_cost"}
    report = {"reference": ref, "operating_point": {"x": 0.0, "accuracy": 0.7, "at_equal_share": {}},
              "routing_metrics": {"router": {"apgr": None, "apgr_discrete": None, "cpt50": None, "cpt80": None}}}
    text = "\n".join(_metric_lines(report))
    assert "APGR and CPT are undefined here: the most accurate single model (tiny) is also the cheapest" in text
