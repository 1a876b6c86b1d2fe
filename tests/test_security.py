"""Loading a router runs no code; a bundle never decides where requests go or which key goes with them."""

from __future__ import annotations

import json
import pickle
import socket

import numpy as np
import pytest

from visroute.llm.endpoints import EndpointNotAllowed
from visroute.router.decide.bundle import RouterBundle
from visroute.router.learn.persist import BundleError
from visroute.router.learn.routers import KNNRouter


class _Boom:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bundle(tmp_path, pipelines=None):
    knn = KNNRouter(k=2).fit(np.eye(3, 4, dtype=np.float32), np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    b = RouterBundle(knn, "knn", ["a", "b"], np.array([0.1, 1.0]), 0.0, "text", None, pipelines or {}, {})
    return b.save(tmp_path / "router")


def test_a_pickle_in_a_bundle_is_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "old"
    d.mkdir()
    (d / "router.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))
    (d / "router.json").write_text(json.dumps({"kind": "knn", "models": ["a", "b"], "costs": [0, 1], "lambda": 0,
                                               "features": "text"}))
    with pytest.raises(BundleError, match="schema visroute.router/2.*not loaded"):
        RouterBundle.load(d)
    good = _bundle(tmp_path)
    (good / "router.pkl").write_bytes(pickle.dumps(_Boom(str(marker))))  # a planted pickle beside a valid bundle
    assert RouterBundle.load(good).models == ["a", "b"]
    assert not marker.exists()


@pytest.mark.parametrize("edit, message", [
    (lambda i: i.update(kind="os.system"), "unknown router kind"),
    (lambda i: i["router"]["params"].update(__class__="x"), "unknown parameter"),
    (lambda i: i["router"].update({"class": "MLPRouter"}), "expected KNNRouter"),
    (lambda i: i["router"]["state"].update({"__dict__": {"type": "json", "value": 1}}), "invalid state attribute"),
    (lambda i: i["router"]["state"]["X_"].update(type="pickle"), "unknown state type"),
    (lambda i: i.update(costs=[1.0]), "'costs' match 'models'"),
])
def test_crafted_bundles_are_rejected_with_one_line(tmp_path, edit, message):
    d = _bundle(tmp_path)
    info = json.loads((d / "router.json").read_text())
    edit(info)
    (d / "router.json").write_text(json.dumps(info))
    with pytest.raises(BundleError, match=message) as e:
        RouterBundle.load(d)
    assert "\n" not in str(e.value)


def test_damaged_weights_are_a_clear_error(tmp_path):
    d = _bundle(tmp_path)
    (d / "state" / "state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(BundleError, match="missing or damaged"):
        RouterBundle.load(d)


def test_no_request_leaves_for_a_host_only_the_bundle_names(tmp_path, monkeypatch, shared_data):
    from visroute.router.decide.run import route_task

    evil = "http://198.51.100.7:9/v1"  # TEST-NET-2: named by the bundle only
    spec = {"head": "vlm", "vlm": f"openai-compatible:{evil}#m", "name": "b"}
    d = _bundle(tmp_path, {"a": {"*": {**spec, "name": "a"}}, "b": {"*": spec}})
    attempts = []
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda addr, *a, **k: attempts.append(addr) or real(addr, *a, **k))
    monkeypatch.delenv("VISROUTE_ALLOW_ENDPOINTS", raising=False)
    monkeypatch.setenv("VISROUTE_ENDPOINTS", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")
    monkeypatch.setattr("visroute.router.decide.bundle.RouterBundle.featurise", lambda self, texts, images=None: np.eye(1, 4))
    img = shared_data / "imagenet-sample" / "n01440764_tench.JPEG"
    with pytest.raises(EndpointNotAllowed, match="not by your configuration"):
        route_task(RouterBundle.load(d), img, "Which?", ["x", "y"])
    assert attempts == []


def test_a_key_goes_only_to_its_configured_endpoint(tmp_path, monkeypatch):
    from visroute.llm import load_generator

    monkeypatch.setenv("OPENAI_API_KEY", "sk-user-openai")
    monkeypatch.setenv("MY_VLLM_KEY", "vllm-secret")
    (tmp_path / "ep.yaml").write_text("vllm: {base_url: 'http://127.0.0.1:8000/v1', api_key_env: MY_VLLM_KEY}\n")
    monkeypatch.setenv("VISROUTE_ENDPOINTS", str(tmp_path / "ep.yaml"))
    monkeypatch.setenv("VISROUTE_ALLOW_ENDPOINTS", "http://127.0.0.1:9999/v1")
    other = load_generator("openai-compatible:http://127.0.0.1:9999/v1#m", trusted_endpoints=())
    assert other.client.api_key == "EMPTY"  # the user's OpenAI key never leaves for another host
    named = load_generator("openai-compatible:@vllm#m", trusted_endpoints=())
    assert named.client.api_key == "vllm-secret" and str(named.client.base_url).startswith("http://127.0.0.1:8000/v1")
    assert load_generator("openai:gpt-4o-mini").client.api_key == "sk-user-openai"
    with pytest.raises(EndpointNotAllowed):
        load_generator("openai-compatible:http://127.0.0.1:7777/v1#m", trusted_endpoints=())


@pytest.mark.parametrize("kind", ["knn", "logistic", "mlp", "mf"])
def test_every_router_kind_round_trips_through_safetensors(tmp_path, kind):
    from visroute.router.learn.kinds import make_router

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(80, 6)).astype(np.float32), rng.random((80, 3)).astype(np.float32)
    est = make_router(kind).fit(X, Y)
    if kind == "mf":
        est.add_model(X[:40], (X[:40, 0] > 0).astype(np.float32))  # a model added later keeps its column too
    b = RouterBundle(est, kind, ["a", "b", "c"] + (["d"] if kind == "mf" else []), np.arange(3 + (kind == "mf")) * 1.0)
    loaded = RouterBundle.load(b.save(tmp_path / kind))
    np.testing.assert_array_equal(loaded.router.predict_proba(X), est.predict_proba(X))
    assert loaded.router.get_params() == est.get_params()


def test_ambient_openai_headers_never_reach_another_endpoint(monkeypatch):
    """The openai client reads OPENAI_ORG_ID / OPENAI_PROJECT_ID / OPENAI_CUSTOM_HEADERS from the environment;
    none of them, and no user key, may travel to an endpoint other than api.openai.com."""
    from tests.openai_stub import StubServer
    from visroute.llm import ChatRequest, load_generator

    monkeypatch.setenv("OPENAI_API_KEY", "sk-user-openai")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "Authorization: Bearer ambient-secret\nX-Leak: yes")
    with StubServer(default=lambda p: "ok") as stub:
        gen = load_generator(f"openai-compatible:{stub.base_url}#m", max_tokens=4)
        assert gen.generate([ChatRequest("hello")])[0].text == "ok"
        sent = stub.headers[-1]
    leaked = [k for k, v in sent.items() if "secret" in v or k in ("openai-organization", "openai-project", "x-leak")]
    assert not leaked and sent.get("authorization") == "Bearer EMPTY"
