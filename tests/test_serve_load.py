"""A bounded load test on loopback: N classify requests at concurrency 1, 8 and 32 against the real server,
0 errors; prints p50/p95/p99 latency and throughput, and stops by itself (count and time bounded)."""

from __future__ import annotations

import base64

from visroute.serve.loadtest import run_load

pytest_plugins = ["tests.serve_fixtures"]
N = 48


def test_load_at_concurrency_1_8_32_has_no_errors(served, imagenet_images, capsys):
    bodies = [{"image": base64.b64encode(p.read_bytes()).decode(), "label_set": "animals", "top_k": 3}
              for p in imagenet_images]
    results = []
    for c in (1, 8, 32):
        r = run_load(served.url, lambda i: {"path": "/v1/classify", "json": bodies[i % len(bodies)]}, N, c,
                     served.headers(), time_limit_s=120)
        results.append(r)
        assert r.ok == N and not r.errors, (r.summary(), r.errors[:3])
        assert r.percentile(50) <= r.percentile(95) <= r.percentile(99)
    with capsys.disabled():
        print("\nserve load test (random-tiny, loopback):")
        for r in results:
            print("  " + r.line())
    # concurrent requests were batched: some forward pass held more than one image
    import httpx2

    metrics = httpx2.get(served.url + "/metrics", headers=served.headers()).text
    bucket1 = next(line for line in metrics.splitlines() if line.startswith('visroute_batch_size_bucket{le="1.0"'))
    count = next(line for line in metrics.splitlines() if line.startswith('visroute_batch_size_count{model="tiny"}'))
    assert float(bucket1.split()[-1]) < float(count.split()[-1])
