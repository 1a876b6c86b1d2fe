"""DisCLIP at dataset scale: selection computed once per fit and reused (predict calls, the w_cls sweep),
precomputed text embeddings, and ``--w-cls-sweep`` for the disclip head; outputs equal the reference fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import visroute.heads.selection as selection
from visroute.errors import InputError
from visroute.heads.selection import DiscriminativeSelectionClassifier
from tests.test_disclip_equivalence import load_reference


class LookupEncoder:
    score_rule, logit_scale, logit_bias = "softmax", 100.0, 0.0

    def __init__(self, table):
        self.table = table
        self.encoded = 0

    def encode_texts(self, texts, batch_size=1024):
        self.encoded += len(texts)
        return torch.from_numpy(np.stack([self.table[t] for t in texts]))

    def probabilities(self, logits):
        return logits.softmax(-1)


class NoTextModel(LookupEncoder):
    def encode_texts(self, texts, batch_size=1024):
        raise AssertionError(f"encoded {texts[:2]} although every embedding was given")


@pytest.fixture(scope="module")
def ref(shared_data):
    return load_reference(shared_data)


def _fit(model, ref, **kw):
    z, inputs, _, dset, _ = ref
    head = DiscriminativeSelectionClassifier(model, dset, k=3, m=5, **{k: v for k, v in kw.items() if k != "fit"})
    return head.fit(inputs["classnames"], torch.from_numpy(z["selection_image_encodings"]), z["selection_labels"],
                    **kw.get("fit", {}))


def test_sweep_reproduces_the_reference_for_every_weight_and_selects_once(ref, monkeypatch):
    z, inputs, expected, _, table = ref
    calls = {"n": 0}
    real = selection.select_descriptions

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(selection, "select_descriptions", counting)
    head = _fit(LookupEncoder(table), ref)
    X, y = torch.from_numpy(z["eval_image_encodings"]), z["eval_labels"]
    weights = expected["cls_weights"]
    rows = head.sweep(X, y, weights)
    assert calls["n"] == 1
    want = expected["classname_free_imagewise"]["predictions"]
    assert [r["w_cls"] for r in rows] == [float(w) for w in weights]
    for r, w, pred in zip(rows, weights, want):
        assert r["acc1"] == pytest.approx(float((np.array(pred) == y).mean()), abs=1e-12), w
    # a later predict on the same images, and on a part of them, selects nothing again
    for w in weights[::7]:
        head.set_params(w_cls=w)
        assert head.predict(X).tolist() == want[weights.index(w)]
        assert head.predict(X[:50]).tolist() == want[weights.index(w)][:50]
    assert calls["n"] == 1
    assert len(head.selection_memo_.rows) == len(torch.unique(torch.tensor(expected["top_k_ambiguous_classes"]), dim=0))


def test_precomputed_text_embeddings_skip_the_text_encoder(ref):
    z, inputs, expected, _, table = ref
    X = torch.from_numpy(z["eval_image_encodings"])
    given = _fit(NoTextModel({}), ref, w_cls=2.0, fit={"text_embeddings": table})
    encoded = _fit(LookupEncoder(table), ref, w_cls=2.0)
    assert given.predict(X).tolist() == encoded.predict(X).tolist()
    torch.testing.assert_close(given.pool_embeddings_, encoded.pool_embeddings_)
    # a partial table: only the missing texts go to the model
    enc = LookupEncoder(table)
    part = {t: v for t, v in list(table.items())[:100]}
    _fit(enc, ref, fit={"text_embeddings": part})
    n_texts = len(inputs["description_texts_gs"]) + len(inputs["caption_texts"])
    assert enc.encoded == n_texts - len(set(part) & set(table))


def test_sweep_refuses_the_classname_containing_mode(ref):
    z, inputs, expected, dset, table = ref
    head = _fit(LookupEncoder(table), ref, mode="classname-containing", fit={"text_embeddings": table})
    with pytest.raises(InputError, match="classname-free"):
        head.sweep(torch.from_numpy(z["eval_image_encodings"]), z["eval_labels"], [0.0, 1.0])


def test_selection_work_is_per_distinct_neighbourhood(ref):
    """Images repeated 10x: the same selections, and the memo holds each neighbourhood once (work is linear)."""
    z, inputs, expected, _, table = ref
    head = _fit(LookupEncoder(table), ref)
    X = torch.from_numpy(z["eval_image_encodings"])
    topk, sel, fb = head.select(X.repeat(10, 1))
    n = len(X)
    for r in range(10):
        assert torch.equal(sel[r * n : (r + 1) * n], sel[:n]) and torch.equal(fb[r * n : (r + 1) * n], fb[:n])
    ours = [[sorted(i for i in row if i >= 0) for row in img] for img in sel[:n].tolist()]
    assert ours == expected["selected_pool_indices"]


def test_cli_eval_w_cls_sweep_for_the_disclip_head(tmp_path, tiny_clip_dir, shared_data, monkeypatch):
    """``visroute eval --head disclip --w-cls-sweep``: one accuracy per weight, each equal to a run at that weight."""
    import shutil

    from typer.testing import CliRunner

    from visroute.cli import app

    for split, rng in (("select", range(0, 4)), ("test", range(100, 110))):
        for cls in sorted(p.name for p in (shared_data / "cifar10-test").iterdir()):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in rng:
                shutil.copy(shared_data / "cifar10-test" / cls / f"{i:04d}.jpg", tmp_path / split / cls)
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    cupl = shared_data / "descriptions" / "cupl" / "cifar10_prompts_full.json"
    base = ["eval", "-m", f"hf:{tiny_clip_dir}", "-d", str(tmp_path / "test"), "--head", "disclip", "--descriptions",
            str(cupl), "--selection-dataset", str(tmp_path / "select"), "--no-progress"]
    r = CliRunner().invoke(app, [*base, "--w-cls-sweep", "0,1,5", "--output", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    doc = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    sweep = doc["visroute"]["metrics_extra"]["w_cls_sweep"]
    assert [s["w_cls"] for s in sweep] == [0.0, 1.0, 5.0]
    assert doc["visroute"]["head_params"]["w_cls_sweep"] == [0.0, 1.0, 5.0]
    r = CliRunner().invoke(app, [*base, "--w-cls", "5", "--output", str(tmp_path / "o5")])
    assert r.exit_code == 0, r.output
    at5 = json.loads(next((tmp_path / "o5").glob("*.json")).read_text())["metrics"]["acc1"]
    assert sweep[2]["acc1"] == pytest.approx(at5, abs=1e-12)
    r = CliRunner().invoke(app, [*base, "--w-cls-sweep", "0,1", "--disclip-mode", "classname-containing",
                                 "--output", str(tmp_path / "o6")])
    assert r.exit_code == 2 and "classname-free" in r.stderr
