"""The lexical router kind: words (TF-IDF) + embedding + length, C by inner cross-validation; its scikit-learn
contract, its data-only persistence (a tampered bundle refused with one line), and `route train --router
lexical` end to end on the shipped RouterBench fixture."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.base import clone
from typer.testing import CliRunner

from visroute.cli import app
from visroute.errors import InputError
from visroute.router.decide.bundle import RouterBundle
from visroute.router.learn.kinds import ROUTER_KINDS, make_router
from visroute.router.learn.lexical import LexicalRouter, TaskInputs
from visroute.router.learn.persist import BundleError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "routerbench"
runner = CliRunner()
WORDS = ["list", "sort", "string", "prime", "matrix", "tree", "graph", "sum", "file", "date", "count", "number"]


def word_table(n: int = 400, seed: int = 0):
    """Embeddings that are pure noise; a word in the text decides which model succeeds (model 2: a coin)."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n)
    texts = [" ".join(rng.choice(WORDS, 6)) + (" using recursion" if k else " using a loop") + f" task {i}"
             for i, k in enumerate(kind)]
    X = rng.normal(size=(n, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y = np.stack([kind == 1, kind == 0, rng.random(n) < 0.5], axis=1).astype(np.float32)
    Y[rng.random(Y.shape) < 0.05] = np.nan
    return TaskInputs.of(texts, X), Y


def _logloss(p, y):
    seen = ~np.isnan(y)
    p = np.clip(p[seen], 1e-6, 1 - 1e-6)
    return float(-(y[seen] * np.log(p) + (1 - y[seen]) * np.log(1 - p)).mean())


@pytest.fixture(scope="module")
def fitted():
    inputs, Y = word_table()
    return inputs, Y, LexicalRouter().fit(inputs[:300], Y[:300])


def test_contract_shapes_clone_and_parameters(fitted):
    inputs, Y, _ = fitted
    router = LexicalRouter(n_c=2, svd_components=8)
    params = router.get_params()
    assert make_router("lexical", **params).get_params() == params
    hashes = {k: joblib.hash(v) for k, v in params.items()}
    before = dict(vars(router))
    router.fit(inputs[:300], Y[:300], sample_weight=np.ones(300))
    added = set(vars(router)) - set(before)
    assert added and all(k.endswith("_") and not k.startswith("_") for k in added), sorted(added)
    assert {k: joblib.hash(v) for k, v in router.get_params().items()} == hashes, "fit mutated a parameter"
    proba = router.predict_proba(inputs[300:])
    assert isinstance(proba, np.ndarray) and proba.dtype == np.float64 and proba.shape == (100, 3)
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(router.predict(inputs[300:]), proba)
    np.testing.assert_array_equal(clone(router).fit(inputs[:300], Y[:300]).predict_proba(inputs[300:]), proba)
    assert router.predict_proba(inputs[:0]).shape == (0, 3)
    assert router.n_features_in_ == 16 and router.n_models_ == 3 and router.C_.shape == (3,)
    assert router.coef_.shape == (3, 16 + router.components_.shape[0] + 1)


def test_words_beat_the_dataset_prior_and_the_embedding_only_router(fitted):
    """The embeddings carry nothing here, the words everything: the lexical router must find it."""
    inputs, Y, router = fitted
    P, test = router.predict_proba(inputs[300:]), Y[300:]
    prior = np.nanmean(Y[:300], axis=0)
    for j in (0, 1):  # the word-decided models: far better than each model's base rate
        assert _logloss(P[:, j], test[:, j]) < 0.5 * _logloss(np.full(100, prior[j]), test[:, j])
    assert _logloss(P[:, 2], test[:, 2]) < _logloss(np.full(100, prior[2]), test[:, 2]) + 0.05  # the coin: no worse
    assert router.C_[2] <= router.C_[0]  # inner CV keeps the coin near its base rate
    emb_only = make_router("logistic", epochs=50).fit(inputs.X[:300], Y[:300]).predict_proba(inputs.X[300:])
    assert _logloss(P[:, 0], test[:, 0]) < _logloss(emb_only[:, 0], test[:, 0]) - 0.2


def test_bad_inputs_are_one_line_errors(fitted):
    inputs, Y, router = fitted
    for call, match in [(lambda: LexicalRouter().fit(inputs.X, Y), "needs TaskInputs"),
                        (lambda: LexicalRouter().fit(inputs, Y * 3), r"\[0, 1\]"),
                        (lambda: LexicalRouter(cv=1).fit(inputs, Y), "cv >= 2"),
                        (lambda: router.predict_proba(TaskInputs.of(["a"], np.zeros((1, 5)))), "expecting 16"),
                        (lambda: router.predict_proba(TaskInputs.of(["a"], np.full((1, 16), np.nan))), "NaN")]:
        with pytest.raises(InputError, match=match) as e:
            call()
        assert "\n" not in str(e.value)


def test_tiny_tables_and_texts_without_words_still_fit():
    X = np.eye(4, 6, dtype=np.float32)
    for texts in (["", "", "", ""], ["a b", "c d", "e f", "g h"]):
        r = LexicalRouter().fit(TaskInputs.of(texts, X), np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32))
        assert r.predict_proba(TaskInputs.of(["zzz"], X[:1])).shape == (1, 2)


def _bundle(tmp_path, fitted) -> tuple[Path, RouterBundle]:
    inputs, _, router = fitted
    b = RouterBundle(router, "lexical", ["a", "b", "c"], np.array([0.1, 0.5, 1.0]))
    return b.save(tmp_path / "router"), b


def test_save_load_round_trip_predicts_identically(tmp_path, fitted):
    inputs, _, router = fitted
    d, _ = _bundle(tmp_path, fitted)
    info = json.loads((d / "router.json").read_text())
    assert info["router"]["class"] == "LexicalRouter" and info["router"]["state"]["vocabulary_"]["type"] == "json"
    assert not [p for p in d.rglob("*") if p.suffix in (".pkl", ".joblib", ".pt", ".bin")]
    loaded = RouterBundle.load(d)
    np.testing.assert_array_equal(loaded.router.predict_proba(inputs[300:]), router.predict_proba(inputs[300:]))
    assert loaded.router.get_params() == router.get_params()


def _tamper_arrays(d: Path, name: str, fn) -> None:
    f = d / "state" / "state.safetensors"
    arrays = load_file(str(f))
    arrays[name] = fn(arrays[name])
    save_file(arrays, str(f))


@pytest.mark.parametrize("edit", [
    lambda d, i: i["router"]["state"]["vocabulary_"]["value"].append(i["router"]["state"]["vocabulary_"]["value"][0]),
    lambda d, i: i["router"]["state"]["vocabulary_"].update(value="not a list"),
    lambda d, i: i["router"]["state"]["length_scale_"].update(value=-1.0),
    lambda d, i: _tamper_arrays(d, "coef_", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.inf, a)),
    lambda d, i: _tamper_arrays(d, "idf_", lambda a: a[:-1]),
    lambda d, i: _tamper_arrays(d, "coef_", lambda a: a[:, :-2].copy()),
], ids=["repeated-term", "vocabulary-type", "negative-scale", "infinite-coef", "idf-length", "coef-width"])
def test_a_tampered_lexical_bundle_is_refused_with_one_line(tmp_path, fitted, edit):
    d, _ = _bundle(tmp_path, fitted)
    info = json.loads((d / "router.json").read_text())
    edit(d, info)
    (d / "router.json").write_text(json.dumps(info))
    with pytest.raises(BundleError) as e:
        RouterBundle.load(d)
    assert "\n" not in str(e.value) and ("lexical router state" in str(e.value) or "router" in str(e.value))


def test_the_kind_is_listed_and_declares_its_inputs():
    assert ROUTER_KINDS["lexical"].inputs == "text+embedding" and ROUTER_KINDS["knn"].inputs == "embedding"
    assert ROUTER_KINDS["slm"].inputs == "text"
    r = runner.invoke(app, ["route", "train", "--help"])
    assert r.exit_code == 0 and "lexical" in r.output


def test_route_train_lexical_end_to_end_on_the_routerbench_fixture(tmp_path):
    files = [str(FIXTURE / "arc_challenge.csv"), str(FIXTURE / "mbpp.csv")]
    steps = [["route", "import", "routerbench", *files, "--out", str(tmp_path / "records.parquet")],
             ["route", "build", str(tmp_path / "records.parquet"), "--out", str(tmp_path / "table")],
             ["route", "train", str(tmp_path / "table"), "--router", "lexical", "--out", str(tmp_path / "router")],
             ["route", "eval", str(tmp_path / "table"), "--router", str(tmp_path / "router"), "--out",
              str(tmp_path / "report")],
             ["route", "ask", "--task", "Write a python function to reverse the words in a sentence.", "--router",
              str(tmp_path / "router"), "--dry-run"]]
    out = {}
    for argv in steps:
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, f"{argv[:2]}: {r.output[-2000:]}"
        out[argv[1]] = r.output
    assert "lexical router over" in out["train"] and "router (lexical)" in out["eval"]
    assert "chosen model:" in out["ask"]
    bundle = RouterBundle.load(tmp_path / "router")
    assert bundle.kind == "lexical" and isinstance(bundle.router, LexicalRouter)
    # route time strips the dataset's shared prefix exactly as training did: the same text, the same prediction
    pre = next(p for p, _ in bundle.text_rule.affixes.values() if p)
    task = "Which gas do plants take in? (A) oxygen (B) carbon dioxide"
    stripped = bundle.predict_proba([task])
    np.testing.assert_allclose(bundle.predict_proba([pre + task]), stripped)
    chosen = bundle.choose(pre + task).predicted_accuracy  # what `route`, Router.route, /v1/route and the proxy use
    np.testing.assert_allclose([chosen[m] for m in bundle.models], stripped[0])
    # a hierarchy's family router is the same kind: fitted, saved, probed on load and used at route time on TaskInputs
    r = runner.invoke(app, ["route", "train", str(tmp_path / "table"), "--router", "lexical", "--strategy", "hierarchy",
                            "--out", str(tmp_path / "hier")])
    assert r.exit_code == 0 and "strategy hierarchy" in r.output, r.output[-2000:]
    hier = RouterBundle.load(tmp_path / "hier")
    assert isinstance(hier.family_router, LexicalRouter) and hier.choose(task).plan["kind"] == "hierarchy"
