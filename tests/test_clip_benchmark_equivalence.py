"""visroute's default eval (exact decoding) against CLIP_benchmark 1.6.2 on the same tiny open_clip checkpoint and
the same images: identical metrics, and on the ImageNet sample the same top-5 classes for every image. CLIP_benchmark
ran once in a throwaway venv (``scripts/make_clip_benchmark_fixture.py``); only its output is stored, in
tests/fixtures, with the fingerprint of the weights it saw."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from visroute.eval.run import RunOptions, evaluate
from visroute.features.cache import FeatureCache
from visroute.pipeline.spec import PipelineSpec

FIXTURES = Path(__file__).parent / "fixtures"


def _reference(name: str, model_dir: Path) -> dict:
    """The stored CLIP_benchmark output, after checking it was computed on these very weights."""
    from safetensors.torch import load_file

    ref = json.loads((FIXTURES / name).read_text())
    state = load_file(str(model_dir / "open_clip_model.safetensors"))
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(np.ascontiguousarray(state[k].float().numpy()).tobytes())
    assert h.hexdigest() == ref["model_fingerprint_sha256"], "the test checkpoint differs from the one CLIP_benchmark saw"
    return ref


def _assert_same_metrics(doc: dict, ref: dict) -> None:
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert doc["metrics"][key] == pytest.approx(ref["metrics"][key], abs=1e-9), key


def test_cifar10_metrics_equal_clip_benchmark(tmp_path, tiny_openclip_dir, shared_data):
    ref = _reference("clip_benchmark_cifar10_tiny_openclip.json", tiny_openclip_dir)
    subset = tmp_path / "cifar100pc"
    for cls in sorted(p.name for p in (shared_data / "cifar10-test").iterdir()):
        (subset / cls).mkdir(parents=True)
        for f in sorted((shared_data / "cifar10-test" / cls).iterdir())[:100]:
            (subset / cls / f.name).symlink_to(f)
    templates = f"{shared_data / 'classnames' / 'en_zeroshot_classification_templates.json'}:cifar10"
    doc = evaluate(PipelineSpec(model=f"openclip:local-dir:{tiny_openclip_dir}", templates=templates, device="cpu"),
                   str(subset), RunOptions(output=tmp_path / "o", cache=FeatureCache(tmp_path / "c")))
    assert doc["visroute"]["n_templates"] == 18 and doc["visroute"]["n_evaluated"] == 1000
    _assert_same_metrics(doc, ref)


def test_imagenet_sample_metrics_and_every_top5_equal_clip_benchmark(tmp_path, tiny_openclip_dir, shared_data):
    """1000 classes x 80 templates, 1000 images, default flags: the numbers a user compares with CLIP_benchmark."""
    import pyarrow.parquet as pq

    ref = _reference("clip_benchmark_imagenet_sample_tiny_openclip.json", tiny_openclip_dir)
    names = shared_data / "classnames"
    dataset = f"{shared_data / 'imagenet-sample' / 'labels.csv'}#image=file&label=class_index"
    doc = evaluate(PipelineSpec(model=f"openclip:local-dir:{tiny_openclip_dir}", device="cpu",
                                templates=f"{names / 'en_zeroshot_classification_templates.json'}:imagenet1k"),
                   dataset, RunOptions(output=tmp_path / "o", cache=FeatureCache(tmp_path / "c"),
                                       classnames=f"{names / 'en_classnames.json'}:imagenet1k"))
    assert doc["visroute"]["n_templates"] == 80 and doc["visroute"]["n_evaluated"] == ref["n_images"] == 1000
    assert doc["visroute"]["decode"] == "exact"
    _assert_same_metrics(doc, ref)
    table = pq.read_table(next((tmp_path / "o").rglob("*.parquet"))).to_pydict()
    ours = {Path(i).name: list(t[:5]) for i, t in zip(table["image_id"], table["topk_labels"])}
    theirs = dict(zip(ref["files"], ref["top5"]))
    assert ours.keys() == theirs.keys()
    differ = [f for f in theirs if ours[f] != theirs[f]]
    assert not differ, f"{len(differ)} of 1000 images have another top-5 (in order), e.g. {differ[:3]}"
