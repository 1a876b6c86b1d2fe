"""The chat proxy executing a cascade bundle end to end (issue 23): ``model: router-<name>`` with a cascade whose
cheap model's pipeline asks for token log-probabilities. A confident cheap answer is returned without calling the
dear model; an unsure or failed one escalates; a streaming client gets the kept answer as events. The service runs
in process (FastAPI's TestClient); the two models are a scriptable OpenAI-compatible stub on loopback.
"""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest

from tests.openai_stub import StubServer

TEXT = "Which animal is this? Options: cat, dog"


@contextlib.contextmanager
def _served(tmp_path, models=("small", "large"), asks=("small",), strategy=None):
    """The service in process with a cascade bundle over ``models`` (cost rising in that order), whose pipeline
    specs ask for log-probabilities for ``asks``; every model an endpoint on one loopback stub."""
    from fastapi.testclient import TestClient

    from visroute.pipeline import PipelineSpec
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.learn.routers import KNNRouter
    from visroute.serve.app import create_app
    from visroute.serve.config import EndpointEntry, ModelEntry, RouterEntry, ServeConfig

    prices = {"*": {"input_per_mtok": 1000.0, "output_per_mtok": 4000.0}}
    specs = {m: PipelineSpec(head="vlm", name=m, vlm=f"openai-compatible:http://127.0.0.1:9/v1#{m}", max_tokens=8,
                             prices=prices, params={"logprobs": True} if m in asks else {}).to_dict()
             for m in models}
    costs = np.array([0.001 * 10 ** i for i in range(len(models))])
    bundle = RouterBundle(KNNRouter(k=1), "knn", list(models), costs, 0.0, "text", None,
                          {m: {"mcq": s} for m, s in specs.items()}, {m: "mcq" for m in models})
    success = np.array([[0.2] * (len(models) - 1) + [0.9], [0.9] * len(models)], np.float32)
    bundle.router.fit(bundle.featurise([TEXT, "Describe the weather."]), success)
    bundle.strategy = strategy or {"kind": "cascade", "chain": [0, 1], "threshold": 0.6, "confidence": "router"}
    path = bundle.save(tmp_path / "router")
    with StubServer(default=lambda prompt: "cat") as stub:
        cfg = ServeConfig(models=(ModelEntry("tiny", "random-tiny", device="cpu"),),
                          routers=(RouterEntry("demo", str(path)),),
                          endpoints=tuple(EndpointEntry(m, stub.base_url.replace("/v1", f"/{m}/v1"), f"tiny-{m}")
                                          for m in models))
        app = create_app(cfg, open_mode=True)
        app.state.serve.check()  # what `visroute serve` runs before it binds: the endpoints become targets
        with TestClient(app) as client:
            for _ in range(600):
                if client.app.state.serve.ready:
                    break
                time.sleep(0.1)
            yield client, stub


@pytest.fixture()
def proxy(tmp_path):
    with _served(tmp_path) as served:
        yield served


def _ask(client, stream=False, **extra):
    body = {"model": "router-demo", "messages": [{"role": "user", "content": TEXT}], "stream": stream, **extra}
    return client.post("/v1/chat/completions", json=body)


def _models(stub) -> list[str]:
    return [r["model"] for r in stub.requests]


def test_a_confident_cheap_answer_is_kept(proxy):
    client, stub = proxy
    stub.logprobs = [-0.02, -0.05]
    r = _ask(client)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "small" and r.headers["x-visroute-model"] == "small"
    assert "logprobs" not in r.json()["choices"][0]  # not asked for by the client
    calls = json.loads(r.headers["x-visroute-calls"])
    assert calls == [{"model": "small", "confidence": pytest.approx(np.exp(-0.035), abs=1e-6), "own": True}]
    assert _models(stub) == ["tiny-small"] and stub.requests[0]["logprobs"] is True


def test_an_unsure_or_failed_cheap_answer_escalates(proxy):
    client, stub = proxy
    stub.logprobs = [-3.0]
    r = _ask(client)
    assert r.status_code == 200 and r.json()["model"] == "large"
    assert _models(stub) == ["tiny-small", "tiny-large"] and "logprobs" not in stub.requests[1]
    assert json.loads(r.headers["x-visroute-calls"])[0]["confidence"] < 0.6
    stub.script = [("status", 500)]  # the cheap endpoint fails: the dear one answers, the failure is listed
    r = _ask(client)
    assert r.status_code == 200 and r.json()["model"] == "large"
    assert json.loads(r.headers["x-visroute-calls"]) == [{"model": "small", "confidence": None, "failed": True}]


def test_a_streaming_client_gets_the_kept_answer_as_events(proxy):
    client, stub = proxy
    stub.logprobs = [-0.01]
    r = _ask(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "cat"
    assert chunks[-1]["usage"]["total_tokens"] > 0 and all(c["model"] == "small" for c in chunks)
    assert _models(stub) == ["tiny-small"] and "stream" not in stub.requests[0]


def test_an_agreement_cascade_stops_when_the_answers_agree(tmp_path):
    """A cascade trained to stop on agreement (as on RouterBench's records): the second model's reply is compared
    with the first's on its answer key; agreeing, it is kept and the dear model is never called."""
    strategy = {"kind": "cascade", "chain": [0, 1, 2], "threshold": 1.0, "confidence": "agreement"}
    with _served(tmp_path, ("small", "mid", "large"), asks=(), strategy=strategy) as (client, stub):
        stub.script = [("text", "B"), ("text", "b\nbecause ...")]
        r = _ask(client)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "mid" and r.headers["x-visroute-model"] == "mid"
        assert _models(stub) == ["tiny-small", "tiny-mid"] and "logprobs" not in stub.requests[0]
        calls = json.loads(r.headers["x-visroute-calls"])
        assert [c["model"] for c in calls] == ["small", "mid"] and calls[1]["confidence"] == 1.0
        assert calls[1]["agreement"] is True
        stub.requests.clear()
        stub.script = [("text", "A"), ("text", "C")]  # they disagree: the last stage answers, as routed
        r = _ask(client)
        assert r.status_code == 200 and r.json()["model"] == "large"
        assert _models(stub) == ["tiny-small", "tiny-mid", "tiny-large"]
        assert json.loads(r.headers["x-visroute-calls"])[1]["confidence"] == 0.0
