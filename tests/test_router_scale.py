"""Router at scale, checked for results: the keyed embedding store, the exact pruned kNN index, and the columnar
table build (records read as dictionaries, several files, prompt-agnostic records broadcast)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visroute.router.data.embed import EmbeddingStore, TextEmbedder
from visroute.router.learn.neighbours import build_index, query, top_k
from visroute.router.learn.routers import KNNRouter
from visroute.router.data.table import build_table, read_records


class CountingEmbedder(TextEmbedder):
    """TextEmbedder whose model is a hash: counts what it is asked to encode."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded += texts
        rng = [np.random.default_rng(abs(hash(t)) % 2**32) for t in texts]
        v = np.stack([r.standard_normal(self.dim) for r in rng]).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_store_adds_a_new_text_as_one_row_and_reuses_the_rest(tmp_path):
    e = CountingEmbedder(cache_dir=tmp_path)
    first = e.embed(["a", "b", "a", "c"])
    assert e.encoded == ["a", "b", "c"] and first.shape == (4, 384)
    np.testing.assert_array_equal(first[0], first[2])
    with sqlite3.connect(tmp_path / "minilm.sqlite") as db:
        before = dict(db.execute("SELECT key, vec FROM emb").fetchall())
    again = CountingEmbedder(cache_dir=tmp_path)  # a new process: nothing in memory
    out = again.embed(["c", "new text", "a"])
    assert again.encoded == ["new text"]
    np.testing.assert_array_equal(out[0], first[3])
    np.testing.assert_array_equal(out[2], first[0])
    with sqlite3.connect(tmp_path / "minilm.sqlite") as db:
        after = dict(db.execute("SELECT key, vec FROM emb").fetchall())
    assert len(after) == 4 and all(after[k] == v for k, v in before.items())


def test_store_imports_an_old_npz_cache_once_and_ignores_bad_rows(tmp_path):
    import hashlib

    key = hashlib.sha256(b"old text").hexdigest()
    vec = np.arange(384, dtype=np.float32) / 384
    np.savez(tmp_path / "minilm.npz", **{key: vec, "bad": np.zeros(3, np.float32)})
    e = CountingEmbedder(cache_dir=tmp_path)
    np.testing.assert_array_equal(e.embed(["old text"])[0], vec)
    assert e.encoded == [] and len(e.store) == 1
    store = EmbeddingStore(tmp_path / "other.sqlite")
    store.put({"k": np.ones(5, np.float32)})  # a wrong-sized vector is never returned
    assert store.get(["k"]) == {}


def test_pruned_index_returns_the_exact_top_k(tmp_path):
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((32, 384))
    X = rng.standard_normal((5000, 32)) @ basis + 0.3 * rng.standard_normal((5000, 384))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    X[4000:4100] = X[100]  # exact ties: the lower row index wins on both paths
    index = build_index(X)
    assert index[0].shape == (384, 64)
    for q in [*X[:40], X[100], *rng.standard_normal((10, 384)).astype(np.float32)]:
        for k in (1, 5, 20):
            assert sorted(query(X, *index, q, k).tolist()) == sorted(top_k(X @ q, k).tolist())
    assert sorted(query(X, *index, X[100], 3).tolist()) == [100, 4000, 4001]


def test_knn_single_decisions_equal_the_batch(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, 16)) @ rng.standard_normal((16, 64))
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Y = (rng.random((3000, 4)) < 0.5).astype(np.float32)
    r = KNNRouter(k=15).fit(X, Y)
    Q = X[:300] + 0.01 * rng.standard_normal((300, 64)).astype(np.float32)
    batch = r.predict_proba(Q)  # over 256 rows: the block path
    single = np.concatenate([r.predict_proba(q[None]) for q in Q])
    np.testing.assert_allclose(single, batch, rtol=0, atol=1e-12)
    assert r.index_basis_.shape == (64, 0)  # 64 dimensions: too few to project, every row is scored


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_table_build_from_two_files_with_star_records_and_quality(tmp_path):
    spec = json.dumps({"head": "vlm"})
    a = [{"task_id": t, "dataset": "ds", "prompt_variant": p, "task_text": f"q{t}", "image_id": f"i{t}",
          "model": "vlm", "correct": c, "cost": 0.5, "pipeline": spec, "dataset_spec": "folder:/d"}
         for t, p, c in (("1", "p2", True), ("1", "p1", False), ("2", "p1", True), ("2", "p2", True))]
    b = [{"task_id": t, "dataset": "ds", "prompt_variant": "*", "task_text": f"q{t}", "image_id": f"i{t}",
          "model": "clip", "correct": c, "cost": None, "quality": q}
         for t, c, q in (("1", True, 0.25), ("2", False, None))]
    _write(tmp_path / "a.parquet", a)
    _write(tmp_path / "b.parquet", b)
    records = read_records([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    table = build_table(records, split_by="sample", seed=0)
    assert table.models == ["clip", "vlm"] and len(table) == 4
    rows = {(p, t): i for i, (p, t) in enumerate(zip(table.prompt, table.task_id))}
    assert list(rows) == [("p1", "1"), ("p1", "2"), ("p2", "1"), ("p2", "2")]  # sorted by (dataset, prompt, task)
    clip, vlm = table.success[:, 0], table.success[:, 1]
    assert clip[rows["p1", "1"]] == clip[rows["p2", "1"]] == 0.25  # quality replaces correct, broadcast to both
    assert clip[rows["p1", "2"]] == 0.0 and vlm[rows["p1", "1"]] == 0.0 and vlm[rows["p2", "1"]] == 1.0
    assert table.cost[rows["p1", "1"], 0] == 0.0 and table.cost[rows["p1", "1"], 1] == 0.5
    assert list(table.text) == ["q1", "q2", "q1", "q2"] and table.text.dtype.kind == "U"
    assert table.meta["pipelines"] == {"vlm": {"p1": {"head": "vlm"}, "p2": {"head": "vlm"}}}
    assert table.meta["dataset_specs"] == {"ds": "folder:/d"} and table.meta["n_records"] == 6
    dp = build_table(records, granularity="dataset-prompt", split_by="sample")
    assert len(dp) == 2 and dp.success[0, 1] == pytest.approx(0.5) and list(dp.task_id) == ["*", "*"]
