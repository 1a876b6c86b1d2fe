"""``visroute serve --engine ray`` (Ray Serve on a local Ray the command starts) against real processes on
127.0.0.1: the same answers as plain ``visroute serve``, and a model replica killed under a bounded load: every
request ends with an answer or a retryable 503 (never a hang or a connection without status). Skipped (counted)
without Ray Serve (``ray[serve]``)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.test_serve_scale import ENV, HEADERS, _answers, config  # noqa: F401  (the shared module fixture)
from tests.serve_fixtures import start_server
from visroute.serve.loadtest import run_load

pytest.importorskip("ray.serve", reason="Ray Serve (pip install 'ray[serve]') is not installed")
pytest_plugins = ["tests.serve_fixtures"]


def _replicas(name: str) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(f"Forward-{name}" in part for part in p.info["cmdline"] or ()):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="module")
def ray_served(config, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("ray-logs")
    one = start_server(config, work / "one.log", ENV)
    ray = start_server(config, work / "ray.log", ENV, args=("--engine", "ray", "--replicas", "2"), wait_ready=300)
    yield one, ray
    one.stop()
    ray.stop(timeout=120)


def test_ray_serve_answers_as_plain_serve(ray_served, imagenet_images):
    one, ray = ray_served
    images = imagenet_images[:6]
    for (la, sa), (lb, sb) in zip(_answers(one.url, images), _answers(ray.url, images)):
        assert la == lb
        assert sb == pytest.approx(sa, abs=1e-6)
    assert len(_replicas("tiny")) == 2


def test_a_model_replica_killed_under_load_loses_no_request(ray_served, imagenet_images):
    import base64

    ray = ray_served[1]
    bodies = [{"image": base64.b64encode(p.read_bytes()).decode(), "label_set": "animals", "top_k": 3}
              for p in imagenet_images]
    victim = _replicas("tiny")[0]

    def kill():
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    r = run_load(ray.url, lambda i: {"path": "/v1/classify", "json": bodies[i % len(bodies)]}, 120, 8, HEADERS,
                 time_limit_s=180)
    killer.join()
    assert not any("time limit" in e for e in r.errors), r.errors[:3]
    assert sum(r.statuses.values()) == 120, r.summary()
    assert set(r.statuses) <= {200, 503}, (r.summary(), r.errors[:3])
    assert r.statuses[200] > 0
    assert victim not in _replicas("tiny")
    print(f"\nRay Serve, a model replica killed under load: {dict(r.statuses)}")
