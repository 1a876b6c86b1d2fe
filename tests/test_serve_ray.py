"""``visroute serve --engine ray`` (Ray Serve on a local Ray the command starts) against real processes on
127.0.0.1: the same answers as plain ``visroute serve``, and a model replica killed under a bounded load: every
request ends with an answer or a retryable 503 (never a hang or a connection without status). Skipped (counted)
without Ray Serve (``ray[serve]``)."""

from __future__ import annotations

import signal

import pytest

from tests.test_serve_scale import ENV, _answers, classify_load_while_signalling, config  # noqa: F401  (the shared module fixture)
from tests.serve_fixtures import start_server

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
    ray = ray_served[1]
    victim = _replicas("tiny")[0]
    r = classify_load_while_signalling(ray.url, imagenet_images, victim, signal.SIGKILL, 120, time_limit_s=180)
    assert victim not in _replicas("tiny")
    print(f"\nRay Serve, a model replica killed under load: {dict(r.statuses)}")
