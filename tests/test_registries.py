"""Adding a head, a model backend and a router kind is one registration each: registered here, from the test,
without touching the package, each is then used through the CLI, the Python API and a grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import BaseEstimator
from typer.testing import CliRunner

import visroute
from visroute.cli import app
from visroute.models import BACKENDS, Backend, register_backend
from visroute.pipeline import HEADS, HeadEntry, Param, register_head
from visroute.router.learn.kinds import ROUTER_KINDS, RouterKind, register_router_kind


# -- a head: class names under one template that the spec's params choose -------------------------------
def _one_template(spec, model, classnames, selection, params):
    from visroute.heads.zeroshot import ZeroShotClassifier

    return [ZeroShotClassifier(model, [params["template"]]).fit(classnames)]


def _template(value):
    if not isinstance(value, str) or "{c}" not in value:
        raise ValueError(f"a template with {{c}}, got {value!r}")
    return value


# -- a backend: "plain:<variant>" loads the random-tiny encoder under its own name ---------------------------
def _load_plain(parsed, device, dtype, image_backend):
    from visroute.models.hf import load_hf_contrastive
    from visroute.models.tiny import ensure_random_tiny

    return load_hf_contrastive(str(ensure_random_tiny(parsed.location)), parsed.text, device, dtype, is_random=True,
                               image_backend=image_backend)


# -- a router kind: each model's training success rate, whatever the task ------------------------------
class PriorRouter(BaseEstimator):
    def fit(self, X, Y, sample_weight=None):
        Y = np.asarray(Y, np.float32)
        self.rate_ = np.nan_to_num(np.nanmean(Y, axis=0), nan=0.0).astype(np.float32)
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict_proba(self, X):
        return np.tile(self.rate_, (len(X), 1))


@pytest.fixture
def registered():
    register_head(HeadEntry("one-template", params={"template": Param("a photo of a {c}.", _template)},
                            classify=_one_template, templates=False, summary="one template from params"))
    register_backend(Backend("plain", "plain:<clip|siglip>", "contrastive", load=_load_plain))
    register_router_kind(RouterKind("prior", lambda: PriorRouter, summary="training success rates"))
    yield
    HEADS.unregister("one-template")
    BACKENDS.unregister("plain")
    ROUTER_KINDS.unregister("prior")


def test_registered_head_backend_and_router_kind_work_everywhere(registered, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("VISROUTE_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    small = tmp_path / "cifar-small"  # 2 images of each CIFAR-10 class
    for d in sorted((shared_data / "cifar10-test").iterdir()):
        (small / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:2]:
            (small / d.name / f.name).write_bytes(f.read_bytes())
    cifar = str(small)
    img = shared_data / "imagenet-sample" / "n02123045_tabby.JPEG"

    # CLI: the new backend classifies, the new head evaluates; a bad parameter is a one-line spec error
    r = runner.invoke(app, ["classify", str(img), "--labels", "cat,dog", "--model", "plain:clip", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == "plain:clip"
    r = runner.invoke(app, ["eval", "-m", "plain:clip", "-d", cifar, "--head", "one-template",
                            "--output", str(tmp_path / "cli-eval"), "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(next((tmp_path / "cli-eval").glob("*.json")).read_text())
    assert doc["visroute"]["head"] == "one-template" and doc["visroute"]["head_params"] == {"template": "a photo of a {c}."}

    # API: the same head with its own parameter, and the backend through classify()
    api = visroute.evaluate("plain:clip", cifar, head="one-template", output=tmp_path / "api",
                            params={"template": "art of a {c}."})
    assert api["visroute"]["pipeline"]["params"] == {"template": "art of a {c}."} and api["visroute"]["n_evaluated"] == 20
    assert visroute.classify(img, ["cat", "dog"], model="plain:clip", top_k=1)[0]["labels"][0] in ("cat", "dog")
    with pytest.raises(visroute.VisrouteError, match="params 'template'"):
        visroute.evaluate("plain:clip", cifar, head="one-template", params={"template": "no placeholder"})

    # grid -> table -> the new router kind (trained by the CLI, loaded and used by the API)
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"""
output: {tmp_path / 'grid'}
device: cpu
datasets: [{cifar}]
models:
  - {{name: plain-one, head: one-template, model: "plain:clip", params: {{template: "a {{c}}."}}}}
  - {{name: tiny-zs, head: zeroshot, model: random-tiny}}
""")
    r = runner.invoke(app, ["grid", "run", str(grid), "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["route", "build", str(tmp_path / "grid" / "records.parquet"), "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["route", "train", str(tmp_path / "t"), "--router", "prior", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    router = visroute.Router.load(tmp_path / "r")
    assert router.bundle.kind == "prior" and set(router.models) == {"plain-one", "tiny-zs"}
    out = router.route(img, "Which animal is this?", ["dog", "cat", "horse"], lam=0.0)
    assert out["chosen"] in router.models and out["answer"] in (None, "dog", "cat", "horse")
    spec = router.bundle.pipeline_spec("plain-one")
    assert spec.head == "one-template" and spec.model == "plain:clip"


def test_unknown_names_are_one_line_errors_naming_the_registered_ones():
    r = CliRunner().invoke(app, ["route", "train", "nowhere", "--router", "priorr"])
    assert r.exit_code != 0
    with pytest.raises(visroute.VisrouteError, match="unknown head 'zeroshoot'"):
        visroute.evaluate("random-tiny", "x", head="zeroshoot")
    with pytest.raises(visroute.VisrouteError, match="unrecognised model spec"):
        visroute.classify("x.jpg", ["a"], model="plainn:clip")
