"""Evaluation harness: metrics vs scikit-learn, feature cache hits, resume after kill -9, datasets, result files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from visroute.eval.metrics import classification_metrics
from visroute.eval.run import RunOptions, evaluate
from visroute.features.cache import FeatureCache
from visroute.models import load_model
from visroute.pipeline.spec import PipelineSpec


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory, shared_data) -> Path:
    """ImageFolder with the first 12 images of each CIFAR-10 test class (120 real JPEGs)."""
    root = tmp_path_factory.mktemp("cifar-sub")
    for cls in sorted(p.name for p in (shared_data / "cifar10-test").iterdir()):
        (root / cls).mkdir()
        for f in sorted((shared_data / "cifar10-test" / cls).iterdir())[:12]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_clip_dir):
    return load_model(f"hf:{tiny_clip_dir}", device="cpu")


def test_metrics_match_scikit_learn():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    n_classes = 7
    y = rng.integers(0, n_classes - 1, size=500)  # the last class never occurs
    scores = rng.normal(size=(500, n_classes)) + 2.0 * np.eye(n_classes)[y] * rng.random((500, 1))
    topk = np.argsort(-scores, axis=1)[:, :5]
    m = classification_metrics(y, topk, n_classes)
    pred = topk[:, 0]
    assert m["acc1"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["acc5"] == pytest.approx(skm.top_k_accuracy_score(y, scores, k=5, labels=np.arange(n_classes)))
    assert m["mean_per_class_recall"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    np.testing.assert_array_equal(m["confusion_matrix"], skm.confusion_matrix(y, pred, labels=np.arange(n_classes)))
    recall = skm.recall_score(y, pred, labels=np.arange(n_classes - 1), average=None, zero_division=0)
    np.testing.assert_allclose(m["per_class_accuracy"][:-1], recall)
    assert np.isnan(m["per_class_accuracy"][-1])


class CountingModel:
    """Wraps a model to count image forwards (the thing the cache must avoid)."""

    def __init__(self, model):
        self.images = 0
        self._orig = model._image_forward

        def forward(batch):
            self.images += len(next(iter(batch.values())))
            return self._orig(batch)

        model._image_forward = forward
        self.model = model

    def restore(self):
        self.model._image_forward = self._orig


def test_second_eval_with_other_templates_encodes_no_image(tmp_path, tiny_model, cifar_subset):
    cache = FeatureCache(tmp_path / "cache")
    counter = CountingModel(tiny_model)
    try:
        a = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path / "out", shard_size=50, cache=cache))
        assert counter.images == 120 and a["visroute"]["feature_cache"]["images_encoded"] == 120
        tpl = tmp_path / "t.txt"
        tpl.write_text("a blurry photo of a {c}.\nart of the {c}.\n")
        b = evaluate(PipelineSpec(model=tiny_model.spec, templates=str(tpl)), str(cifar_subset),
                     RunOptions(output=tmp_path / "out", shard_size=50, cache=cache), model=tiny_model)
    finally:
        counter.restore()
    assert counter.images == 120  # no new forward
    assert b["visroute"]["feature_cache"] == {**a["visroute"]["feature_cache"], "images_encoded": 0, "shards_reused": 3}
    assert b["visroute"]["n_templates"] == 2 and a["_file"] != b["_file"]
    # a cached re-run gives the identical result
    c = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path / "out2", shard_size=50, cache=cache))
    assert c["metrics"] == a["metrics"]


def test_result_files_have_clip_benchmark_keys_and_predictions(tmp_path, tiny_model, cifar_subset):
    import pyarrow.parquet as pq

    doc = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path, cache=FeatureCache(tmp_path / "c")))
    on_disk = json.loads(Path(doc["_file"]).read_text())
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(on_disk)
    assert on_disk["task"] == "zeroshot_classification"
    assert set(on_disk["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    v = on_disk["visroute"]
    assert v["n_evaluated"] == 120 and len(v["confusion_matrix"]) == 10 and sum(map(sum, v["confusion_matrix"])) == 120
    table = pq.read_table(tmp_path / v["predictions_file"]).to_pandas()
    assert len(table) == 120 and set(table.columns) >= {"image_id", "label", "topk_labels", "topk_scores", "correct"}
    assert table["correct"].mean() == pytest.approx(on_disk["metrics"]["acc1"])
    assert table["image_id"].iloc[0] == "airplane/0000.jpg" and len(table["topk_labels"].iloc[0]) == 5


def test_corrupt_files_are_counted_listed_and_skipped(tmp_path, tiny_model, cifar_subset):
    d = tmp_path / "ds"
    shutil.copytree(cifar_subset, d)
    (d / "cat" / "0003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (d / "dog" / "broken.png").write_text("not a png")
    doc = evaluate(tiny_model, str(d), RunOptions(output=tmp_path / "out", shard_size=40, cache=FeatureCache(tmp_path / "c")))
    v = doc["visroute"]
    assert v["n_images"] == 121 and v["n_evaluated"] == 119 and v["n_skipped"] == 2
    assert sorted(s["id"] for s in v["skipped"]) == ["cat/0003.jpg", "dog/broken.png"]


def test_skip_existing(tmp_path, tiny_model, cifar_subset):
    first = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path, skip_existing=True, cache=FeatureCache(tmp_path / "c")))
    second = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path, skip_existing=True, cache=FeatureCache(tmp_path / "c2")))
    assert second.get("_skipped_existing") and second["metrics"] == json.loads(Path(first["_file"]).read_text())["metrics"]
    assert not (tmp_path / "c2").exists()


def test_hf_datasets_and_manifests_give_the_same_features(tmp_path, tiny_model, cifar_subset):
    import datasets

    files = sorted(cifar_subset.rglob("*.jpg"))[::6]  # 20 images, 2 per class
    classes = sorted(p.name for p in cifar_subset.iterdir())
    labels = [classes.index(f.parent.name) for f in files]
    hf = datasets.Dataset.from_dict(
        {"img": [str(f) for f in files], "lbl": labels, "question": [f"q{i}" for i in range(len(files))]},
        features=datasets.Features({"img": datasets.Image(), "lbl": datasets.ClassLabel(names=classes),
                                    "question": datasets.Value("string")}),
    )
    hf.save_to_disk(str(tmp_path / "hfds"))
    csv = tmp_path / "manifest.csv"
    csv.write_text("path,label,question\n" + "".join(f"{f},{f.parent.name},q{i}\n" for i, f in enumerate(files)))
    jsonl = tmp_path / "manifest.jsonl"
    jsonl.write_text("".join(json.dumps({"path": str(f), "label": classes.index(f.parent.name)}) + "\n" for f in files))

    cache = FeatureCache(tmp_path / "c")
    docs = [evaluate(tiny_model, spec, RunOptions(output=tmp_path / "o" / str(k), classnames=None, cache=cache))
            for k, spec in enumerate([f"hf:{tmp_path / 'hfds'}#image=img&label=lbl", str(csv)])]
    assert docs[0]["visroute"]["classnames"] == classes == docs[1]["visroute"]["classnames"]
    assert docs[0]["metrics"] == pytest.approx(docs[1]["metrics"])
    feats = [FeatureCache(tmp_path / "c").root / d["visroute"]["feature_cache"]["key"] for d in docs]
    from safetensors.torch import load_file

    a, b = (load_file(str(f / "shard-000000.safetensors"))["embeddings"] for f in feats)
    torch.testing.assert_close(a, b)
    import pyarrow.parquet as pq

    t = pq.read_table(Path(docs[0]["_file"]).with_suffix(".parquet")).to_pandas()
    assert list(t["question"][:2]) == ["q0", "q1"]  # extra columns travel to the predictions
    # jsonl with integer labels needs class names: supplied from a file
    names = tmp_path / "names.txt"
    names.write_text("\n".join(classes))
    doc = evaluate(tiny_model, str(jsonl), RunOptions(output=tmp_path / "o" / "j", classnames=str(names), cache=cache))
    assert doc["metrics"] == pytest.approx(docs[1]["metrics"]) and doc["visroute"]["classnames"] == classes


def _cache_dir_shards(cache_root: Path) -> list[Path]:
    return sorted(cache_root.glob("features/*/shard-*.safetensors"))


def test_killed_run_resumes_from_last_complete_shard(tmp_path, cifar_subset, tiny_clip_dir):
    """kill -9 mid-run, then re-run: finished shards are reused, and the result equals an uninterrupted run."""
    big = tmp_path / "big"
    for cls_dir in cifar_subset.iterdir():
        (big / cls_dir.name).mkdir(parents=True)
        for rep in range(5):
            for f in cls_dir.iterdir():
                shutil.copy(f, big / cls_dir.name / f"{rep}_{f.name}")
    env = {**os.environ, "VISROUTE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "visroute.cli", "eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(big),
           "--shard-size", "20", "--batch-size", "10", "--workers", "0", "--no-progress", "--device", "cpu",
           "--output", str(tmp_path / "out")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(_cache_dir_shards(tmp_path / "cache")) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_cache_dir_shards(tmp_path / "cache"))
    assert 4 <= done < 30, "the run must be killed mid-way"
    first_mtimes = {p.name: p.stat().st_mtime_ns for p in _cache_dir_shards(tmp_path / "cache")}

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    fc = doc["visroute"]["feature_cache"]
    assert fc["shards_reused"] == done and fc["images_encoded"] == 600 - 20 * done
    assert not list((tmp_path / "cache").glob("features/*/.tmp-*"))  # a torn temp file from the kill is cleaned up
    for p in _cache_dir_shards(tmp_path / "cache"):  # no finished shard was recomputed
        if p.name in first_mtimes:
            assert p.stat().st_mtime_ns == first_mtimes[p.name]

    env2 = {**os.environ, "VISROUTE_CACHE": str(tmp_path / "cache2")}
    clean = subprocess.run([*cmd[:-1], str(tmp_path / "out2")], env=env2, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    ref = json.loads(next((tmp_path / "out2").glob("*.json")).read_text())
    assert ref["metrics"] == doc["metrics"]
    import pyarrow.parquet as pq

    a = pq.read_table(next((tmp_path / "out").glob("*.parquet"))).to_pandas()
    b = pq.read_table(next((tmp_path / "out2").glob("*.parquet"))).to_pandas()
    assert a["image_id"].tolist() == b["image_id"].tolist()
    np.testing.assert_allclose(np.stack(a["topk_scores"]), np.stack(b["topk_scores"]), atol=1e-6)


def test_cache_write_failure_keeps_finished_shards(tmp_path, tiny_model, cifar_subset, monkeypatch):
    """Disk full mid-write: a clear error, earlier shards intact, and a re-run completes from there."""
    from visroute.errors import VisrouteError
    from visroute.features import cache as cache_mod

    real = cache_mod.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        if path.name.startswith("shard-"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(cache_mod, "atomic_write_bytes", flaky)
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(VisrouteError, match="No space left"):
        evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path / "o", shard_size=30, cache=cache))
    assert len(list((tmp_path / "c").glob("*/shard-*"))) == 2
    assert not list((tmp_path / "c").glob("*/.tmp-*"))
    monkeypatch.setattr(cache_mod, "atomic_write_bytes", real)
    doc = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path / "o", shard_size=30, cache=cache))
    assert doc["visroute"]["feature_cache"]["shards_reused"] == 2 and doc["visroute"]["n_evaluated"] == 120


def test_cli_eval_report_and_cache(tmp_path, cifar_subset, tiny_clip_dir, monkeypatch):
    from typer.testing import CliRunner

    from visroute.cli import app

    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "-m", f"hf:{tiny_clip_dir}", "-m", "random-tiny", "-d", str(cifar_subset),
                            "-d", str(tmp_path / "missing"), "--output", str(tmp_path / "out"), "--no-progress"])
    assert r.exit_code == 1, r.output  # two runs done, the missing dataset reported
    assert "not found" in r.stderr and r.stdout.count("cifar-sub") == 2 and "random weights" in r.stdout
    png = tmp_path / "plot.png"
    r = runner.invoke(app, ["report", str(tmp_path / "out"), "--plot", str(png)])
    assert r.exit_code == 0 and r.stdout.count("cifar-sub") == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    r = runner.invoke(app, ["cache", "ls", "--json"])
    entries = json.loads(r.stdout)
    assert len(entries) == 2 and all(e["complete"] for e in entries)
    r = runner.invoke(app, ["cache", "clear"])
    assert "removed 2" in r.stdout and json.loads(runner.invoke(app, ["cache", "ls", "--json"]).stdout) == []


def test_torchvision_builtin_spec(tmp_path, tiny_model, cifar_subset):
    """torchvision:<Name>:<root> uses the already-downloaded dataset and never downloads."""
    doc = evaluate(tiny_model, f"torchvision:ImageFolder:{cifar_subset}", RunOptions(output=tmp_path, cache=FeatureCache(tmp_path / "c")))
    ref = evaluate(tiny_model, str(cifar_subset), RunOptions(output=tmp_path / "r", cache=FeatureCache(tmp_path / "c")))
    assert doc["metrics"] == pytest.approx(ref["metrics"]) and doc["visroute"]["n_evaluated"] == 120
    from visroute.data.datasets import DatasetError, load_dataset

    with pytest.raises(DatasetError, match="never downloads"):
        load_dataset(f"torchvision:CIFAR10:{tmp_path / 'nothing'}")
