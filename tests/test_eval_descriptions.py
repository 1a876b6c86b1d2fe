"""Description heads through `visroute eval` on cached features, with the published description files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visroute.cli import app
from visroute.descriptions import DescriptionError, load_descriptions, save_descriptions
from visroute.eval.run import RunOptions, evaluate
from visroute.pipeline.spec import PipelineSpec
from visroute.features.cache import FeatureCache
from visroute.models import load_model


@pytest.fixture(scope="module")
def splits(tmp_path_factory, shared_data):
    """Two disjoint CIFAR-10 ImageFolders: selection (images 0-5 per class) and test (images 100-119)."""
    root = tmp_path_factory.mktemp("cifar-splits")
    for split, rng in (("select", range(0, 6)), ("test", range(100, 120))):
        for cls in sorted(p.name for p in (shared_data / "cifar10-test").iterdir()):
            (root / split / cls).mkdir(parents=True)
            for i in rng:
                shutil.copy(shared_data / "cifar10-test" / cls / f"{i:04d}.jpg", root / split / cls)
    return root


@pytest.fixture(scope="module")
def model(tiny_clip_dir):
    return load_model(f"hf:{tiny_clip_dir}", device="cpu")


def test_every_description_head_runs_on_cached_features(tmp_path, model, splits, shared_data):
    cupl = shared_data / "descriptions" / "cupl" / "cifar10_prompts_full.json"
    cache = FeatureCache(tmp_path / "c")
    run = RunOptions(output=tmp_path / "out", shard_size=100, cache=cache)
    zs = evaluate(model, str(splits / "test"), run)
    encoded_before = zs["visroute"]["feature_cache"]["images_encoded"]
    assert encoded_before == 200
    docs = {}
    for head, extra in [("descriptions", {}), ("cupl", {}), ("random-words", {"repeats": 3}),
                        ("random-chars", {"repeats": 2}), ("classname-free", {"w_cls_sweep": [0.0, 1.0, 5.0]}),
                        ("disclip", {"selection_dataset": str(splits / "select"), "w_cls": 1.0})]:
        spec = PipelineSpec(head=head, model=model.spec, descriptions=str(cupl), params=extra)
        docs[head] = evaluate(spec, str(splits / "test"), run, model=model)
        fc = docs[head]["visroute"]["feature_cache"]
        assert fc["images_encoded"] == 0 and fc["shards_reused"] == 2, head  # no test image re-encoded
        assert 0.0 <= docs[head]["metrics"]["acc1"] <= 1.0
    rw = docs["random-words"]["visroute"]["metrics_extra"]
    assert len(rw["acc1_repeats"]) == 3 and rw["acc1_std"] >= 0
    assert docs["random-words"]["metrics"]["acc1"] == pytest.approx(sum(rw["acc1_repeats"]) / 3)
    sweep = docs["classname-free"]["visroute"]["metrics_extra"]["w_cls_sweep"]
    assert [s["w_cls"] for s in sweep] == [0.0, 1.0, 5.0]
    assert sweep[0]["acc1"] == pytest.approx(docs["classname-free"]["metrics"]["acc1"])  # w_cls=0 is the headline
    assert docs["disclip"]["visroute"]["head_params"]["k"] == 3
    files = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert len(files) == 7  # one result per head, none overwritten


def test_description_files_are_checked_against_dataset_classes(tmp_path, model, splits, shared_data):
    pets = shared_data / "descriptions" / "dclip" / "descriptors_pets.json"
    with pytest.raises(DescriptionError) as e:
        evaluate(PipelineSpec(head="descriptions", model=model.spec, descriptions=str(pets)), str(splits / "test"),
                 RunOptions(output=tmp_path, cache=FeatureCache(tmp_path / "c")), model=model)
    assert "10 dataset class(es) have no descriptions: 'airplane'" in str(e.value) and "match no dataset class" in str(e.value)
    bad = tmp_path / "bad.json"
    bad.write_text('{"airplane": ["has wings"], "cat": "not a list"}')
    with pytest.raises(DescriptionError, match="'cat' must be a list of strings"):
        load_descriptions(bad)
    bad.write_text('{"airplane": ["has wings",]')
    with pytest.raises(DescriptionError, match="not valid JSON"):
        load_descriptions(bad)


def test_disclip_files_use_the_dclip_fallback_and_visroute_format_roundtrips(tmp_path, shared_data):
    d = shared_data / "descriptions" / "disclip"
    con = load_descriptions(d / "descriptions_food_con_llama.json")
    assert len(con.empty_classes) == 27
    dclip = load_descriptions(d / "descriptions_food_dclip.json")
    filled = con.with_fallback(dclip)
    assert filled.empty_classes == []
    for i, own in enumerate(con.descriptions):
        assert filled.descriptions[i] == (own if own else dclip.descriptions[i])
    out = save_descriptions(tmp_path / "food.json", filled, generator="test", prompt="n/a")
    back = load_descriptions(out)
    assert back.classnames == filled.classnames and back.descriptions == filled.descriptions
    assert back.provenance["generator"] == "test" and "date" in back.provenance
    # DCLIP ImageNet keys differ from CLIP's names at a few indices; loose matching + clear report
    imnet = load_descriptions(shared_data / "descriptions" / "dclip" / "descriptors_imagenet.json")
    names = json.loads((shared_data / "classnames" / "en_classnames.json").read_text())["imagenet1k"]
    with pytest.raises(DescriptionError, match="newt"):
        imnet.aligned_to(names)


def test_cli_eval_with_descriptions(tmp_path, splits, tiny_clip_dir, shared_data, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    cupl = shared_data / "descriptions" / "cupl" / "cifar10_prompts_base.json"
    r = CliRunner().invoke(app, ["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(splits / "test"), "--head", "random-words",
                                 "--descriptions", str(cupl), "--repeats", "2", "--output", str(tmp_path / "o"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "random-words" in r.stdout and "cifar10_prompts_base.json" in r.stdout
    r = CliRunner().invoke(app, ["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(splits / "test"), "--head", "disclip",
                                 "--descriptions", str(cupl), "--output", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and "--selection-dataset" in r.stderr


def test_explain_writes_html_and_json(tmp_path, splits, tiny_clip_dir, shared_data, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    cupl = shared_data / "descriptions" / "cupl" / "cifar10_prompts_full.json"
    img = splits / "test" / "cat" / "0100.jpg"
    page = tmp_path / "e.html"
    r = CliRunner().invoke(app, ["explain", str(img), "--descriptions", str(cupl), "--model", f"hf:{tiny_clip_dir}",
                                 "--html", str(page), "--json", "--top-k", "2"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    classes = doc[0]["classes"]
    assert len(classes) == 2 and classes[0]["probability"] >= classes[1]["probability"]
    first = classes[0]["descriptions"]
    assert sum(d["contribution"] for d in first) == pytest.approx(classes[0]["score"], abs=1e-5)
    text = page.read_text()
    assert "data:image/jpeg;base64," in text and classes[0]["class"] in text and first[0]["text"][:30] in text
    # the disclip explanation: the selected descriptions per candidate of the neighbourhood
    r = CliRunner().invoke(app, ["explain", str(img), "--descriptions", str(cupl), "--model", f"hf:{tiny_clip_dir}",
                                 "--selection-dataset", str(splits / "select"), "--html", str(page), "--json"])
    assert r.exit_code == 0, r.output
    cands = json.loads(r.stdout)[0]["classes"]
    assert len(cands) == 3 and all(1 <= len(c["descriptions"]) <= 5 for c in cands)
    assert [c["score"] for c in cands] == sorted((c["score"] for c in cands), reverse=True)
