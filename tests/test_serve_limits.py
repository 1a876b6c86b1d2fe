"""Capacity and lifecycle of a real ``visroute serve`` process: 503 + Retry-After when the bounded queue is full,
graceful shutdown that finishes in-flight requests, and start-up refusals (keys, open mode, config, key routing)."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading
import time

import httpx2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.serve_fixtures import API_KEY, start_server
from visroute.cli import app as cli


def _big_jpeg(side: int, seed: int = 0) -> bytes:
    """A large noisy photo-sized JPEG: decoding it takes long enough to hold a queue place."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (side // 16, side // 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-queue")
    cfg = {"models": [{"name": "tiny", "model": "random-tiny", "device": "cpu"}],
           "label_sets": [{"name": "two", "labels": ["cat", "dog"]}],
           "batching": {"max_batch_size": 8, "max_wait_ms": 50, "max_queue": 2},
           "limits": {"max_pixels": 40_000_000, "max_body_mb": 32, "request_timeout_s": 60}}
    (work / "serve.yaml").write_text(json.dumps(cfg))
    server = start_server(work / "serve.yaml", work / "server.log", {"VISROUTE_SERVE_API_KEYS": API_KEY},
                          args=("--graceful-timeout", "20"))
    yield server
    server.stop()


def test_full_queue_answers_503_with_retry_after(small_queue):
    image = _big_jpeg(3000)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def burst():
        async with httpx2.AsyncClient(base_url=small_queue.url, headers=headers, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/classify", files={"image": ("a.jpg", image)}) for _ in range(8)))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and codes.count(200) >= 2 and codes.count(503) >= 1, codes
    full = next(r for r in responses if r.status_code == 503)
    assert int(full.headers["retry-after"]) >= 1 and "capacity" in full.json()["error"]["message"]
    metrics = httpx2.get(small_queue.url + "/metrics", headers=headers).text
    assert f'visroute_rejected_total{{reason="queue_full"}} {float(codes.count(503))}' in metrics
    # once the burst is over the queue is empty again: a new request is served
    assert httpx2.post(small_queue.url + "/v1/classify", files={"image": ("a.jpg", image)}, headers=headers,
                       timeout=60).status_code == 200


def test_graceful_shutdown_finishes_requests_in_flight(small_queue):
    image = _big_jpeg(5000, seed=1)
    out = {}

    def slow():
        out["r"] = httpx2.post(small_queue.url + "/v1/classify", files={"image": ("big.jpg", image)},
                               headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.25)  # the request is being decoded now
    small_queue.proc.send_signal(signal.SIGTERM)
    t.join(60)
    assert out["r"].status_code == 200 and out["r"].json()["labels"]
    assert small_queue.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn ends by the signal it handled
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(small_queue.url + "/healthz", timeout=5)


def _serve(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["serve", *args], env=env or {})


def test_start_up_refusals_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("VISROUTE_SERVE_API_KEYS", raising=False)
    r = _serve("--open", "--host", "0.0.0.0")
    assert r.exit_code == 2 and "binds only to loopback" in r.output and "Traceback" not in r.output
    r = _serve()
    assert r.exit_code == 2 and "no API keys" in r.output
    (tmp_path / "keys").write_text("# ops\nshort\n")
    r = _serve("--api-keys-file", str(tmp_path / "keys"))
    assert r.exit_code == 2 and "shorter than 16" in r.output
    (tmp_path / "bad.yaml").write_text("models: [{name: m, model: random-tiny}]\nlabel_set: []\n")
    r = _serve("--open", "--config", str(tmp_path / "bad.yaml"))
    assert r.exit_code == 2 and "unknown key 'label_set'" in r.output and "did you mean 'label_sets'" in r.output
    (tmp_path / "bad2.yaml").write_text("models: [{name: m, model: random-tiny}]\nbatching: {max_queue: 0}\n")
    r = _serve("--open", "--config", str(tmp_path / "bad2.yaml"))
    assert r.exit_code == 2 and "max_queue must be a whole number >= 1" in r.output


def test_a_shared_config_cannot_choose_keys(tmp_path, monkeypatch):
    """serve.yaml names URLs, never keys: a key goes only where the user's own endpoints file binds it."""
    from types import SimpleNamespace

    from visroute.pipeline import PipelineSpec
    from visroute.serve.config import parse_config
    from visroute.serve.state import ServeState

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-never-leaves-0123456789")
    monkeypatch.setenv("VISROUTE_ENDPOINTS", str(tmp_path / "endpoints.yaml"))
    monkeypatch.delenv("VISROUTE_ALLOW_ENDPOINTS", raising=False)
    (tmp_path / "endpoints.yaml").write_text("mine: {base_url: 'http://127.0.0.1:9/v1', api_key_env: MY_KEY}\n")
    monkeypatch.setenv("MY_KEY", "my-key-0123456789abcdef")
    (tmp_path / "s.yaml").write_text("models: [{name: m, model: random-tiny}]\nendpoints:\n  - {name: x, "
                                     "base_url: 'http://127.0.0.1:8/v1', model: m, api_key_env: OPENAI_API_KEY}\n")
    r = _serve("--open", "--config", str(tmp_path / "s.yaml"))
    assert r.exit_code == 2 and "unknown key 'api_key_env'" in r.output and "sk-secret" not in r.output

    def state(endpoints: list[dict]) -> ServeState:
        st = ServeState(parse_config({"models": [{"name": "m", "model": "random-tiny"}], "endpoints": endpoints},
                                     "serve.yaml", tmp_path))
        st.check()
        return st

    st = state([{"name": "evil", "base_url": "http://127.0.0.1:8/v1", "model": "m"},
                {"name": "ok", "base_url": "@mine", "model": "m"},
                {"name": "same", "base_url": "http://127.0.0.1:9/v1/", "model": "m"}])
    assert st.targets["evil"].key is None  # contacted (the operator named it) but with no key of yours
    assert st.targets["ok"].key == "my-key-0123456789abcdef" and st.targets["same"].key == "my-key-0123456789abcdef"
    with pytest.raises(Exception, match="not in your endpoints file"):
        state([{"name": "y", "base_url": "@nobody", "model": "m"}])
    # a URL only a router bundle names is not contacted
    spec = PipelineSpec(head="vlm", vlm="openai-compatible:http://127.0.0.1:7/v1#m")
    st.routers["r"] = SimpleNamespace(bundle=SimpleNamespace(models=["b"], pipelines={"b": {"mcq": spec.to_dict()}},
                                                             pipeline_spec=lambda name: spec))
    with pytest.raises(Exception, match="not by your configuration"):
        st.target("b")


def test_a_load_failure_stops_the_server_with_the_message(tmp_path):
    import subprocess
    import sys

    from tests.serve_fixtures import ROOT, free_port

    (tmp_path / "s.yaml").write_text("models: [{name: m, model: random-tiny, device: cpu}]\nlabel_sets:\n  - {name: d, "
                                     "labels: [cat, dog], head: descriptions, descriptions: missing.json}\n")
    proc = subprocess.run([sys.executable, "-m", "visroute.cli", "serve", "--open", "--port", str(free_port()),
                           "--config", str(tmp_path / "s.yaml")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "the service stopped" in proc.stderr and "missing.json" in proc.stderr and "Traceback" not in proc.stderr
