"""One routing decision: `RouterBundle.choose` is what the CLI, `Router.route`, `/v1/route` and the chat proxy all
run, and a service holding several routers loads each model once (its runtime is passed down, never a module's)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.serve_fixtures import ROUTER_TASKS, ROUTER_TEXT, build_router


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory, shared_data) -> Path:
    return build_router(tmp_path_factory.mktemp("router") / "r", shared_data)


def _state(router_dir: Path):
    from visroute.serve.config import parse_config
    from visroute.serve.state import ServeState

    raw = {"models": [{"name": "tiny", "model": "random-tiny", "device": "cpu"}],
           "routers": [{"name": "a", "path": str(router_dir)}, {"name": "b", "path": str(router_dir)}]}
    return ServeState(parse_config(raw, "test", router_dir.parent))


def test_a_service_with_two_image_routers_loads_the_image_model_once(router_dir, shared_data, monkeypatch):
    import visroute.models as models
    from visroute.serve.proxy import decide
    from visroute.tasks.model import task_text

    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda spec, **kw: loads.append(spec) or real(spec, **kw))
    state = _state(router_dir)
    state.load()
    img = shared_data / "imagenet-sample" / f"{ROUTER_TASKS[0][0]}.JPEG"
    buf = io.BytesIO()
    Image.open(img).convert("RGB").save(buf, format="PNG")
    for name in ("a", "b"):
        router = state.routers[name]
        assert router.route(str(img), ROUTER_TEXT, ["yes", "no"], run=False)["chosen"] in ("small", "large")
        chosen, d = decide(state, router, task_text(ROUTER_TEXT), buf.getvalue(), None)
        assert chosen in ("small", "large") and set(d.predicted_accuracy) == {"small", "large"}
    assert loads == ["random-tiny"], loads  # the served model, the routers' image model: one load
    a, b = (state.routers[n].bundle._embedder(state.runtime) for n in ("a", "b"))
    assert a is b  # one text encoder for both routers


def test_every_entry_point_makes_the_same_decision(router_dir, shared_data):
    from visroute.api import Router
    from visroute.pipeline import Runtime
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.decide.run import route_task
    from visroute.serve.proxy import decide

    img = shared_data / "imagenet-sample" / f"{ROUTER_TASKS[0][0]}.JPEG"
    bundle = RouterBundle.load(router_dir)
    rt = Runtime()
    from visroute.tasks.model import task_text

    for lam in (0.0, 1e3):
        direct = bundle.choose(task_text(ROUTER_TEXT, ["yes", "no"]), str(img), lam, rt)
        api = Router(bundle, rt).route(img, ROUTER_TEXT, ["yes", "no"], run=False, lam=lam)
        cli = route_task(RouterBundle.load(router_dir), img, ROUTER_TEXT, ["yes", "no"], lam=lam, run=False)
        assert direct.chosen == api["chosen"] == cli["chosen"]
        assert api["predicted_accuracy"] == pytest.approx(direct.predicted_accuracy)
    assert bundle.choose(task_text(ROUTER_TEXT, ["yes", "no"]), None, 1e3, rt).chosen == "small"  # cheapest at high lambda
    state = type("S", (), {"runtime": rt, "config": type("C", (), {"limits": type("L", (), {"max_pixels": 10**7})})})
    pil_bytes = img.read_bytes()
    chosen, _ = decide(state, Router(bundle, rt), task_text(ROUTER_TEXT, ["yes", "no"]), pil_bytes, 0.0)
    assert chosen == bundle.choose(task_text(ROUTER_TEXT, ["yes", "no"]), str(img), 0.0, rt).chosen
