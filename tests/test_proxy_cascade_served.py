"""The chat proxy executing a cascade bundle end to end (issue 23): ``model: router-<name>`` with a cascade whose
cheap model's pipeline asks for token log-probabilities. A confident cheap answer is returned without calling the
dear model; an unsure or failed one escalates; a streaming client gets the kept answer as events. The service runs
in process (FastAPI's TestClient); the two models are a scriptable OpenAI-compatible stub on loopback.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.openai_stub import StubServer

TEXT = "Which animal is this? Options: cat, dog"


@pytest.fixture()
def proxy(tmp_path):
    from fastapi.testclient import TestClient

    from visroute.pipeline import PipelineSpec
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.learn.routers import KNNRouter
    from visroute.serve.app import create_app
    from visroute.serve.config import EndpointEntry, ModelEntry, RouterEntry, ServeConfig

    prices = {"*": {"input_per_mtok": 1000.0, "output_per_mtok": 4000.0}}
    specs = {m: PipelineSpec(head="vlm", name=m, vlm=f"openai-compatible:http://127.0.0.1:9/v1#{m}", max_tokens=8,
                             prices=prices, params={"logprobs": True} if m == "small" else {}).to_dict()
             for m in ("small", "large")}
    bundle = RouterBundle(KNNRouter(k=1), "knn", ["small", "large"], np.array([0.001, 0.01]), 0.0, "text", None,
                          {m: {"mcq": s} for m, s in specs.items()}, {"small": "mcq", "large": "mcq"})
    bundle.router.fit(bundle.featurise([TEXT, "Describe the weather."]), np.array([[0.2, 0.9], [0.9, 0.9]], np.float32))
    bundle.strategy = {"kind": "cascade", "chain": [0, 1], "threshold": 0.6, "confidence": "router"}
    path = bundle.save(tmp_path / "router")
    with StubServer(default=lambda prompt: "cat") as stub:
        cfg = ServeConfig(models=(ModelEntry("tiny", "random-tiny", device="cpu"),),
                          routers=(RouterEntry("demo", str(path)),),
                          endpoints=(EndpointEntry("small", stub.base_url, "tiny-small"),
                                     EndpointEntry("large", stub.base_url.replace("/v1", "/large/v1"), "tiny-large")))
        app = create_app(cfg, open_mode=True)
        app.state.serve.check()  # what `visroute serve` runs before it binds: the endpoints become targets
        with TestClient(app) as client:
            for _ in range(600):
                if client.app.state.serve.ready:
                    break
                time.sleep(0.1)
            yield client, stub


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
