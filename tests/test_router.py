"""Routers on records whose structure is known, with real MiniLM embeddings of real-sounding task texts."""

from __future__ import annotations

import numpy as np
import pytest

from visroute.router.decide.rules import calibrate, choose
from visroute.router.data.embed import TextEmbedder
from visroute.router.evaluate.curves import evaluate_router, plot_report
from visroute.router.learn.routers import KNNRouter, LogisticRouter, MatrixFactorizationRouter, MLPRouter
from visroute.testing.routing import COSTS, MODELS, make_records


@pytest.fixture(scope="module")
def data():
    texts, succ, cost, kinds = make_records()
    X = TextEmbedder().embed(texts)
    rng = np.random.default_rng(1)
    test = rng.random(len(texts)) < 0.3
    return X, succ, cost, test


@pytest.mark.parametrize("router", [KNNRouter(k=15), LogisticRouter(epochs=200, lr=0.05), MLPRouter(epochs=150, lr=0.01),
                                    MatrixFactorizationRouter(dim=16, epochs=150, lr=0.01)],
                         ids=["knn", "logistic", "mlp", "mf"])
def test_router_beats_best_single_and_recovers_the_oracle_gap(router, data):
    X, succ, cost, test = data
    router.fit(X[~test], succ[~test])
    proba = router.predict_proba(X[test])
    rep = evaluate_router(proba, succ[test], cost[test], MODELS, COSTS, lam=0.0)
    best = rep["single_models"][rep["best_single"]]["accuracy"]
    op = rep["operating_point"]
    assert op["accuracy"] > best + 0.08
    assert op["oracle_gap_recovered"] > 0.6
    assert op["cost"] < rep["single_models"]["vlm+llm"]["cost"]  # and cheaper than always calling the heavy model
    assert rep["cost_to_match_best_single_fraction_of_most_expensive"] < 0.6


@pytest.mark.parametrize("router", [KNNRouter(k=15), MLPRouter(epochs=150, lr=0.01)], ids=["knn", "mlp"])
def test_router_on_shuffled_labels_does_not_beat_the_best_single_model(router, data):
    X, succ, cost, test = data
    shuffled = succ[np.random.default_rng(5).permutation(len(succ))]
    router.fit(X[~test], shuffled[~test])
    rep = evaluate_router(router.predict_proba(X[test]), succ[test], cost[test], MODELS, COSTS, lam=0.0)
    best = rep["single_models"][rep["best_single"]]["accuracy"]
    assert rep["operating_point"]["accuracy"] < best + 0.03
    assert (rep["operating_point"]["oracle_gap_recovered"] or 0) < 0.2


def test_cost_aware_decisions_and_calibration(data, tmp_path):
    X, succ, cost, test = data
    router = KNNRouter(k=15).fit(X[~test], succ[~test])
    val_p = router.predict_proba(X[~test])
    lam = calibrate(val_p, COSTS, target_share=0.2, model_index=2)
    picks = choose(router.predict_proba(X[test]), COSTS, lam)
    assert np.mean(picks == 2) <= 0.3  # heavy-model share near the target on held-out tasks
    lam_cost = calibrate(val_p, COSTS, target_cost=0.001)
    assert COSTS[choose(val_p, COSTS, lam_cost)].mean() <= 0.001 + 1e-12
    assert (choose(val_p, COSTS, 1e9) == 0).all()  # a huge lambda always takes the cheapest
    rep = evaluate_router(router.predict_proba(X[test]), succ[test], cost[test], MODELS, COSTS, lam=lam)
    accs = [p["accuracy"] for p in rep["pareto"]]
    assert accs == sorted(accs)  # the Pareto front rises with cost
    png = plot_report(rep, tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_matrix_factorisation_adds_a_model_from_few_tasks(data):
    X, succ, cost, test = data
    mf = MatrixFactorizationRouter(dim=16, epochs=150, lr=0.01).fit(X[~test][:, :], succ[~test][:, :2])
    before = mf.predict_proba(X[test]).copy()
    tr = np.flatnonzero(~test)[:300]
    j = mf.add_model(X[tr], succ[tr, 2])
    after = mf.predict_proba(X[test])
    assert j == 2 and after.shape[1] == 3
    np.testing.assert_allclose(after[:, :2], before, atol=1e-6)  # existing models untouched
    from sklearn.metrics import roc_auc_score

    joint = MatrixFactorizationRouter(dim=16, epochs=150, lr=0.01).fit(X[~test], succ[~test]).predict_proba(X[test])
    auc_new, auc_joint = roc_auc_score(succ[test, 2], after[:, 2]), roc_auc_score(succ[test, 2], joint[:, 2])
    # as good as training with the model from the start (within noise), and well above chance
    assert auc_new > 0.6 and auc_new > auc_joint - 0.05


def test_multimodal_features_resolve_what_text_cannot(data):
    """Identical task text for every image of a dataset; which model succeeds depends on the image. Text alone
    cannot route; text + image embedding can."""
    rng = np.random.default_rng(3)
    n = 500
    text = np.tile(TextEmbedder().embed(["What is shown in this image? Options: 1000 classes. Dataset: imagenet"]), (n, 1))
    centers = rng.normal(size=(2, 32))
    group = rng.integers(0, 2, n)
    image = centers[group] + 0.3 * rng.normal(size=(n, 32))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    succ = np.where(group[:, None] == 0, [1.0, 0.0], [0.0, 1.0]).astype(np.float32)
    costs = np.array([0.001, 0.002])
    test = rng.random(n) < 0.3
    text_only = KNNRouter(k=10).fit(text[~test], succ[~test]).predict_proba(text[test])
    both = np.hstack([text, image])
    multi = KNNRouter(k=10).fit(both[~test], succ[~test]).predict_proba(both[test])
    acc = lambda p: evaluate_router(p, succ[test], succ[test] * 0 + costs, ["a", "b"], costs, lam=0.0)["operating_point"]["accuracy"]  # noqa: E731
    assert acc(text_only) < 0.65 and acc(multi) > 0.95


def test_small_language_model_router_learns_task_types():
    """The published design: a small LM (here the shipped MiniLM checkpoint) fine-tuned as a multi-label router."""
    from visroute.router.learn.routers import SequenceClassifierRouter

    texts, succ, cost, kinds = make_records(n=240, seed=2)
    rng = np.random.default_rng(0)
    test = rng.random(len(texts)) < 0.25
    router = SequenceClassifierRouter(epochs=4, lr=1e-4, batch_size=16).fit([t for t, m in zip(texts, test) if not m],
                                                                              succ[~test])
    proba = router.predict_proba([t for t, m in zip(texts, test) if m])
    rep = evaluate_router(proba, succ[test], cost[test], MODELS, COSTS, lam=0.0)
    best = rep["single_models"][rep["best_single"]]["accuracy"]
    assert proba.shape == (test.sum(), 3) and rep["operating_point"]["accuracy"] > best + 0.05
