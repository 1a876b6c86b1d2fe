"""RouteLLM's routing metrics against hand-computed curves; calibration that lands on the target share; cascade
and ensemble costs that add up call by call; hierarchical routing and MF add_model on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from visroute.router.decide.rules import calibrate, choose
from visroute.router.evaluate.metrics import (apgr_dense, apgr_discrete, cpt, quantile_points, sweep_metrics, threshold_curve,
                                     two_model_metrics)
from visroute.router.evaluate.policies import dataset_prior, policy_curve, reference, share_threshold
from visroute.router.decide.strategies import (calibrate_cascade, calibrate_margin, cascade, cascade_sweep, ensemble,
                                        pareto_chain)

# 4 tasks: the weak model solves 0 and 3, the strong one 0, 1 and 2 -> A_weak 0.5, A_strong 0.75
QW = np.array([1.0, 0.0, 0.0, 1.0])
QS = np.array([1.0, 1.0, 1.0, 0.0])
SUCC = np.stack([QW, QS], axis=1)
COST = np.tile([1.0, 10.0], (4, 1))


def test_oracle_curve_matches_the_hand_computed_one():
    oracle = QS - QW  # [0, 1, 1, -1]
    curve = threshold_curve(oracle, QW, QS, COST[:, 0], COST[:, 1])
    np.testing.assert_allclose(curve.x, [0, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.accuracy, [0.5, 1.0, 1.0, 0.75])
    np.testing.assert_allclose(curve.cost, [1.0, 5.5, 7.75, 10.0])
    # PGR 0 -> 2 -> 2 -> 1: area 0.5 + 0.5 + 0.375
    assert apgr_dense(curve, 0.5, 0.75) == pytest.approx(1.375)
    assert cpt(curve, 0.5, 0.5, 0.75) == pytest.approx(0.125) and cpt(curve, 0.8, 0.5, 0.75) == pytest.approx(0.2)
    x, acc = quantile_points(oracle, QW, QS)
    # RouteLLM's 11 cuts land on shares 0, 0.5 (x6), 0.75 (x3), 1: same area here
    np.testing.assert_allclose(x, [0] + [0.5] * 6 + [0.75] * 3 + [1])
    assert apgr_discrete(x, acc, 0.5, 0.75) == pytest.approx(1.375)
    m = two_model_metrics(oracle, SUCC, COST, 0, 1)
    assert m["apgr"] == pytest.approx(1.375) and m["accuracy_at_50"] == pytest.approx(1.0)
    assert m["cost_at_50"] == pytest.approx(5.5) and m["pgr_at"]["0.5"] == pytest.approx(2.0)


def test_a_router_ranking_tasks_the_wrong_way_round_scores_below_random():
    worst = threshold_curve(-(QS - QW), QW, QS, COST[:, 0], COST[:, 1])
    # weak-only task first: PGR 0 -> -1 -> -1 -> 1 over x = 0, .25, .5, 1: area -.125 - .25 + 0
    assert apgr_dense(worst, 0.5, 0.75) == pytest.approx(-0.375)
    assert cpt(worst, 0.5, 0.5, 0.75) == pytest.approx(0.875)


def test_random_router_apgr_is_one_half_in_expectation_and_exactly_for_ties():
    rng = np.random.default_rng(0)
    n = 300
    qw, qs = (rng.random(n) < 0.55).astype(float), (rng.random(n) < 0.8).astype(float)
    succ, cost = np.stack([qw, qs], 1), np.tile([1.0, 3.0], (n, 1))
    tied = two_model_metrics(np.zeros(n), succ, cost, 0, 1)
    assert tied["apgr"] == pytest.approx(0.5) and tied["apgr_discrete"] == pytest.approx(0.5)
    assert tied["cpt50"] == pytest.approx(0.5) and tied["cpt80"] == pytest.approx(0.8)
    draws = [two_model_metrics(rng.random(n), succ, cost, 0, 1) for _ in range(200)]
    assert np.mean([d["apgr"] for d in draws]) == pytest.approx(0.5, abs=0.01)
    assert np.mean([d["apgr_discrete"] for d in draws]) == pytest.approx(0.5, abs=0.01)
    assert np.std([d["apgr"] for d in draws]) > 0.01  # each draw varies; only the mean is 0.5


def test_no_gap_gives_no_metric():
    succ = np.stack([QS, QS], 1)
    m = two_model_metrics(np.arange(4.0), succ, COST, 0, 1)
    assert m["apgr"] is None and m["cpt50"] is None and m["pgr_at"]["0.5"] is None


def test_many_models_use_the_normalised_cost_axis():
    # cheapest (cost 1, acc .5), best single (cost 3, acc .8); one sweep point recovers the whole gap at cost 2
    m = sweep_metrics(np.array([0.8]), np.array([2.0]), 0.5, 1.0, 0.8, 3.0)
    assert m["axis"] == "normalised_cost"
    assert m["apgr"] == pytest.approx(0.25 + 0.5) and m["cpt50"] == pytest.approx(0.25)
    # a point past the best model's cost is cut at x = 1
    m2 = sweep_metrics(np.array([0.8]), np.array([5.0]), 0.5, 1.0, 0.8, 3.0)
    assert m2["apgr"] == pytest.approx(0.25)


def test_policy_curve_two_models_equals_ranking_by_predicted_gain():
    proba = np.array([[0.9, 0.9], [0.1, 0.8], [0.2, 0.9], [0.9, 0.1]])
    ref = reference(SUCC, COST, np.array([1.0, 10.0]))
    assert (ref.cheap, ref.best, ref.a_cheap, ref.a_best) == (0, 1, 0.5, 0.75)
    m, _ = policy_curve(proba, SUCC, COST, np.array([1.0, 10.0]), np.ones(4), ref)
    assert m["apgr"] == pytest.approx(1.375)  # its gains order the tasks like the oracle


def test_share_threshold_and_lambda_calibration_hit_the_target():
    rng = np.random.default_rng(1)
    score = rng.normal(size=1000)
    cut = share_threshold(score, 0.5)
    assert np.mean(score > cut) == pytest.approx(0.5, abs=1e-3)
    assert np.mean(np.round(score, 1) > share_threshold(np.round(score, 1), 0.5)) <= 0.5  # ties stay cheap
    proba = rng.random((1000, 3))
    proba[:, 2] = np.minimum(proba[:, 2] + 0.6, 1.0)  # the dear model is the most accurate on most tasks
    costs = np.array([1.0, 2.0, 5.0])
    assert np.mean(choose(proba, costs, 0.0) == 2) > 0.8
    for target in (0.1, 0.37, 0.5, 0.8):
        lam = calibrate(proba, costs, target_share=target, model_index=2)
        share = np.mean(choose(proba, costs, lam) == 2)
        assert target - 0.002 <= share <= target + 1e-9
        # the smallest such lambda: a slightly smaller one sends more than the target
        assert np.mean(choose(proba, costs, lam * 0.999 - 1e-9) == 2) > target or lam == 0
    lam = calibrate(proba, costs, target_cost=2.5)
    assert np.mean(costs[choose(proba, costs, lam)]) == pytest.approx(2.5, abs=0.02)


def test_dataset_prior_uses_training_means_and_falls_back_for_unseen_datasets():
    tr_groups = np.array(["a", "a", "b", "b"])
    tr = np.array([[1, 1], [0, 1], [1, 0], [1, np.nan]], dtype=float)
    p = dataset_prior(tr_groups, tr, np.array(["a", "b", "c"]))
    np.testing.assert_allclose(p[0], [0.5, 1.0])
    np.testing.assert_allclose(p[1], [1.0, 0.0])
    np.testing.assert_allclose(p[2], [0.75, 2 / 3])


def test_cascade_cost_adds_up_call_by_call():
    succ = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
    cost = np.array([[1, 4, 20], [1, 4, 20], [1.5, 4, 25], [1, 4.5, 20]])
    conf = np.array([[0.9, 0.9, 0.9], [0.2, 0.8, 0.5], [0.1, 0.3, 0.5], [0.4, 0.1, 0.1]])
    out = cascade(succ, cost, conf, [0, 1, 2], threshold=0.5)
    np.testing.assert_array_equal(out["model"], [0, 1, 2, 2])
    np.testing.assert_allclose(out["cost"], [1, 1 + 4, 1.5 + 4 + 25, 1 + 4.5 + 20])
    np.testing.assert_allclose(out["success"], [1, 1, 1, 0])
    accs, costs, esc = cascade_sweep(succ, cost, conf, [0, 1, 2])
    assert costs[0] == pytest.approx(cost[:, 0].mean()) and accs[0] == pytest.approx(0.25)  # never escalate
    assert costs[-1] == pytest.approx(cost.sum(1).mean()) and accs[-1] == pytest.approx(0.75)  # always escalate
    t = calibrate_cascade(succ, cost, conf, [0, 1, 2], target_cost=10.0)
    assert cascade(succ, cost, conf, [0, 1, 2], t)["cost"].mean() <= 10.0
    assert pareto_chain(np.array([1.0, 4.0, 20.0, 3.0]), np.array([0.2, 0.5, 0.9, 0.1])) == [0, 1, 2]


def test_ensemble_pays_for_both_calls_and_keeps_the_more_confident_answer():
    proba = np.array([[0.9, 0.85], [0.9, 0.2], [0.6, 0.62]])
    succ = np.array([[0, 1], [1, 0], [1, 0]], dtype=float)
    cost = np.array([[1.0, 10.0], [1.0, 10.0], [2.0, 12.0]])
    conf = np.array([[0.3, 0.7], [0.9, 0.9], [0.8, 0.4]])
    out = ensemble(proba, succ, cost, np.array([1.0, 10.0]), lam=0.05, margin=0.1, confidence=conf)
    np.testing.assert_array_equal(out["both"], [True, False, True])
    np.testing.assert_allclose(out["cost"], [11.0, 1.0, 14.0])
    np.testing.assert_array_equal(out["model"], [1, 0, 0])
    np.testing.assert_allclose(out["success"], [1, 1, 1])
    m = calibrate_margin(proba, succ, cost, np.array([1.0, 10.0]), 0.05, target_cost=9.0, confidence=conf)
    assert ensemble(proba, succ, cost, np.array([1.0, 10.0]), 0.05, m, conf)["cost"].mean() <= 9.0
    assert m == pytest.approx(0.05)  # the widest margin within 9.0: tasks 0 and 2 doubled (mean 26/3), not task 1


def _planted(n=900, seed=0):
    """Task features decide which models succeed: two cheap 'contrastive' models on feature 0, a 'generative' one
    on feature 1, and a dear generative model that is right 82% of the time whatever the task."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    logits = np.stack([3 * X[:, 0], 3 * X[:, 0] + 1.0, 3 * X[:, 1], np.full(n, 1.5)], 1)
    Y = (rng.random((n, 4)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    return X, Y


def test_hierarchical_routing_is_scored_beside_flat_on_the_same_axis():
    from visroute.router.evaluate.hierarchy import hierarchical_vs_flat

    X, Y = _planted()
    costs = np.array([1.0, 2.0, 3.0, 6.0])
    res = hierarchical_vs_flat(X[:600], Y[:600], X[600:], Y[600:], np.tile(costs, (300, 1)), costs,
                               ["contrastive", "contrastive", "generative", "generative"], kind="knn")
    for name in ("flat", "hierarchical"):  # both find the cheap models' niches: far above random (0.5)
        assert res[name]["axis"] == "normalised_cost" and 0.8 < res[name]["apgr"] < 1.5
        assert res[name]["cpt50"] < 0.25


def test_mf_add_model_from_300_tasks_leaves_the_others_untouched():
    from visroute.router.evaluate.hierarchy import add_model_vs_retrain

    X, Y = _planted(1200, seed=2)
    res = add_model_vs_retrain(X[:900], Y[:900], X[900:], Y[900:], new=2, n_tasks=300, epochs=20, batch_size=128)
    assert res["n_tasks"] == 300 and res["others_unchanged_max_abs_diff"] < 1e-6  # float noise only
    assert res["added"]["auc"] > 0.85 and res["added"]["auc"] > res["retrained"]["auc"] - 0.05


def test_evaluate_router_reports_routellm_metrics_with_baselines_at_the_routers_share():
    from visroute.router.evaluate.curves import evaluate_router

    X, Y = _planted(600, seed=4)
    costs = np.array([1.0, 2.0, 3.0, 6.0])
    proba = np.clip(Y + 0.3 * np.random.default_rng(0).normal(size=Y.shape), 0, 1)  # noisy foresight
    rep = evaluate_router(proba, Y, np.tile(costs, (600, 1)), list("abcd"), costs, lam=0.02)
    assert rep["reference"]["axis"] == "normalised_cost" and rep["reference"]["best"] == "d"
    rm = rep["routing_metrics"]
    assert rm["random"]["apgr"] == pytest.approx(0.5) and rm["random"]["cpt80"] == pytest.approx(0.8)
    assert rm["oracle"]["apgr"] > rm["router"]["apgr"] > 0.6
    op = rep["operating_point"]
    x = (op["cost"] - 1.0) / (6.0 - 1.0)
    assert op["x"] == pytest.approx(x)
    rnd = op["at_equal_share"]["random"]
    assert rnd["x"] == pytest.approx(x) and rnd["accuracy"] == pytest.approx(
        rep["reference"]["accuracy_cheap"] + min(x, 1) * (rep["reference"]["accuracy_best"] - rep["reference"]["accuracy_cheap"]))
    assert op["accuracy"] > rnd["accuracy"]
