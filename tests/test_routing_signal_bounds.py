"""The in-sample ceiling of the agreement strategies (benchmarks/_bounds.py) on toy tables worked out by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("_bounds", Path(__file__).resolve().parents[1] / "benchmarks" / "_bounds.py")
bounds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bounds)

# three models costing 0, 1 and 10 per task; the two cheap ones agree exactly where the cheap answer is right
S = np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]], np.float64)
C = np.tile([0.0, 1.0, 10.0], (4, 1))
A = np.array([["A", "A", "A"], ["A", "A", "A"], ["A", "B", "C"], ["B", "A", "A"]], dtype=object)


def test_cascade_outcome_by_hand():
    s, c = bounds.agreement_outcome(S, C, A, (0, 1, 2), 1.0)
    assert s.tolist() == [1, 1, 1, 1]  # tasks 0-1: the two cheap models agree (right); 2-3: the dear one answers
    assert c.tolist() == [1, 1, 11, 11]  # every call paid


def test_frontier_by_hand():
    # single models at normalised cost 0, 0.1, 1 with accuracy 0.5, 0.75, 1: AIQ 0.1*0.625 + 0.9*0.875 = 0.85;
    # the cascade adds (0.6, 1.0): 0.0625 + 0.5*0.875 + 0.4*1 = 0.9, a gain of 0.05, the best model's accuracy at
    # 60% of its cost, and 1 - (0.75 + 0.25*0.5/0.9) = 1/9 above the single-model hull at x = 0.6
    r = bounds.frontier([1.0], [6.0], S, C)
    assert r["zero"] == pytest.approx(0.85)
    assert r["gain"] == pytest.approx(0.05)
    assert r["cost_to_best"] == pytest.approx(0.6)
    assert (r["gap"], r["gap_at"]) == pytest.approx((1 / 9, 0.6))
    assert r["vertices"] == [0]
    # every configuration together (other cascades and the vote are dominated here): the same ceiling
    labels, Ss, Cs = bounds.configurations(S, C, A)
    best = bounds.frontier(Ss.mean(1), Cs.mean(1), S, C)
    assert best["gain"] == pytest.approx(0.05) and best["cost_to_best"] == pytest.approx(0.6)
    assert {labels[i][1] for i in best["vertices"]} == {(0, 1, 2)}
    # a point under the single-model hull changes nothing
    assert bounds.frontier([0.75], [6.0], S, C)["gain"] == pytest.approx(0.0)


def test_majority_stops_where_all_agree_escalates():
    S4 = np.array([[0, 0, 1, 0]], np.float64)
    C4 = np.array([[1.0, 2.0, 4.0, 8.0]])
    A4 = np.array([["A", "B", "A", "D"]], dtype=object)
    # stage 2 agrees with one of the two earlier answers: half, enough for the majority rule only
    assert [v.tolist() for v in bounds.agreement_outcome(S4, C4, A4, (0, 1, 2, 3), 0.5)] == [[1.0], [7.0]]
    assert [v.tolist() for v in bounds.agreement_outcome(S4, C4, A4, (0, 1, 2, 3), 1.0)] == [[0.0], [15.0]]


def test_vote_two_of_three():
    S3 = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 1]], np.float64)
    C3 = np.tile([1.0, 2.0, 3.0], (3, 1))
    A3 = np.array([["A", "B", "B"], ["A", "B", "C"], ["", "X", "X"]], dtype=object)
    acc = np.array([0.6, 0.5, 0.9])  # model 2 most accurate, then 0, then 1
    s, c = bounds.vote_outcome(S3, C3, A3, (0, 1, 2), acc)
    # task 0: B twice, model 2's response; task 1: no two agree, model 2's; task 2: X twice, model 2's
    assert s.tolist() == [0, 0, 1] and c.tolist() == [6, 6, 6]
    s, _ = bounds.vote_outcome(S3, C3, A3, (0, 1, 2), np.array([0.6, 0.9, 0.5]))
    assert s.tolist() == [1, 0, 1]  # model 1 most accurate: its B (task 0) and X (task 2); task 1: its response


def test_stage_lists_cost_order_then_any_final():
    lists = bounds.stage_lists([3.0, 1.0, 2.0, 10.0])  # cost order 1, 2, 0, 3
    assert len(lists) == len(set(lists)) == 6 + 12 + 4  # pairs; pairs then any final; triples then the last one
    assert (1, 2) in lists and (1, 2, 0) in lists and (2, 0, 1) in lists and (1, 2, 0, 3) in lists
    assert (0, 1) not in lists and (3, 1) not in lists and (1, 0, 2, 3) not in lists
    rank = {1: 0, 2: 1, 0: 2, 3: 3}
    for t in lists:  # every model before the final one in cost order (a pair: both)
        group = t if len(t) == 2 else t[:-1]
        assert [rank[j] for j in group] == sorted(rank[j] for j in group) and len(set(t)) == len(t)


def test_held_out_never_beats_in_sample_on_the_same_half():
    reps = 25
    rows = bounds.held_out(*bounds.configurations(np.tile(S, (reps, 1)), np.tile(C, (reps, 1)), np.tile(A, (reps, 1)))[1:],
                           np.tile(S, (reps, 1)), np.tile(C, (reps, 1)), seeds=2)
    assert rows.shape == (4, 2)
    assert np.all(rows[:, 0] <= rows[:, 1] + 1e-12)  # the picked ones are a subset of every configuration
    assert np.all(rows[:, 0] > 0.02)  # the cheap-agreement cascade is picked on either half and pays off
