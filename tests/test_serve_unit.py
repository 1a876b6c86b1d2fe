"""The service's parts without a server: micro-batching, admission, key checks, config parsing, decoding."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visroute.serve.auth import KeyChecker
from visroute.serve.batching import Admission, MicroBatcher, QueueFull
from visroute.serve.config import ServeConfigError, default_config, parse_config
from visroute.serve.decode import BadImageInput, b64_bytes, decode_image
from visroute.serve.proxy import parse_router_model


def _batcher(sizes: list[int], **kw) -> MicroBatcher:
    def encode(items):
        sizes.append(len(items))
        time.sleep(0.02)  # a forward pass takes time, so requests pile up behind it
        return torch.tensor(items, dtype=torch.float32).reshape(len(items), 1)

    return MicroBatcher("m", encode, **kw)


async def _request(b: MicroBatcher, value: float, decode_s: float = 0.0):
    with b.admit() as ticket:
        await asyncio.sleep(decode_s)  # decoding, off the loop in the service
        row, info = await b.submit(value, ticket)
    return float(row[0, 0]), info


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    sizes: list[int] = []

    async def main():
        b = _batcher(sizes, max_batch_size=8, max_wait_ms=50, max_queue=64)
        b.start()
        out = await asyncio.gather(*(_request(b, float(i), decode_s=0.001 * (i % 5)) for i in range(40)))
        await b.stop()
        return out

    out = asyncio.run(main())
    assert [v for v, _ in out] == [float(i) for i in range(40)]  # each caller gets its own embedding back
    assert sum(sizes) == 40 and max(sizes) <= 8 and len(sizes) < 40  # batched, never over the maximum
    assert all(info.batch_size in sizes for _, info in out)


def test_a_lone_request_does_not_wait_for_company():
    sizes: list[int] = []

    async def main():
        b = _batcher(sizes, max_batch_size=32, max_wait_ms=2000, max_queue=4)
        b.start()
        t = time.perf_counter()
        await _request(b, 1.0)
        took = time.perf_counter() - t
        await b.stop()
        return took

    assert asyncio.run(main()) < 0.5 and sizes == [1]


def test_batching_off_is_one_image_per_pass():
    sizes: list[int] = []

    async def main():
        b = _batcher(sizes, max_batch_size=1, max_wait_ms=5, max_queue=64)
        b.start()
        await asyncio.gather(*(_request(b, float(i)) for i in range(6)))
        await b.stop()

    asyncio.run(main())
    assert sizes == [1] * 6


def test_admission_is_bounded_and_released():
    a = Admission(2, retry_after_s=3)
    with a.admit(), a.admit():
        with pytest.raises(QueueFull) as e:
            with a.admit():
                pass
        assert e.value.retry_after_s == 3
    with a.admit():
        assert a.pending == 1
    assert a.pending == 0


def test_a_caller_that_gave_up_is_dropped_from_the_batch():
    sizes: list[int] = []

    async def main():
        b = _batcher(sizes, max_batch_size=8, max_wait_ms=5, max_queue=8)
        b.start()
        with pytest.raises((asyncio.TimeoutError, TimeoutError)):
            await asyncio.wait_for(_request(b, 1.0, decode_s=0.2), timeout=0.05)
        got, _ = await _request(b, 2.0)
        await b.stop()
        return got

    assert asyncio.run(main()) == 2.0 and sizes == [1]


def test_router_model_names():
    routers = {"demo": 1, "a-b": 2}
    assert parse_router_model("router-demo", routers) == ("demo", None)
    assert parse_router_model("router-demo-0.25", routers) == ("demo", 0.25)
    assert parse_router_model("router-a-b", routers) == ("a-b", None)
    for bad in ("router-demo-x", "router-demo--1", "router-nope", "demo", "router-demo-nan"):
        assert parse_router_model(bad, routers) is None, bad


def test_key_checker():
    k = KeyChecker(["k" * 20, "z" * 20])
    assert k.allowed({"authorization": "Bearer " + "z" * 20}) and k.allowed({"x-api-key": "k" * 20})
    assert not k.allowed({"authorization": "Bearer " + "k" * 19}) and not k.allowed({})
    assert not k.allowed({"authorization": "Basic " + "k" * 20})
    assert KeyChecker([], open_mode=True).allowed({})
    assert k.is_public("/healthz") and k.is_public("/static/app.js") and not k.is_public("/metrics")


def test_config_is_strict_and_resolves_files(tmp_path):
    (tmp_path / "names.json").write_text('{"x": ["a", "b"]}')
    cfg = parse_config({"models": [{"name": "m", "model": "random-tiny"}],
                        "label_sets": [{"name": "s", "labels": "names.json:x"}]}, "serve.yaml", tmp_path)
    assert cfg.label_sets[0].labels == f"{tmp_path.resolve()}/names.json:x" and cfg.batching.max_batch_size == 32
    bad = [({"models": []}, "at least one"), ({"model": []}, "did you mean 'models'"),
           ({"models": [{"name": "m", "model": "x", "devise": "cpu"}]}, "did you mean 'device'"),
           ({"models": [{"name": "m", "model": "x"}], "label_sets": [{"name": "s", "labels": [], "model": "q"}]},
            "names model 'q'"),
           ({"models": [{"name": "m", "model": "x"}],
             "endpoints": [{"name": "e", "base_url": "file:///etc", "model": "y"}]}, "http(s) URL"),
           ({"models": [{"name": "m", "model": "x"}], "allow_image_urls": ["*"]}, "URL prefix"),
           ({"models": [{"name": "m", "model": "x"}, {"name": "m", "model": "y"}]}, "used twice"),
           ({"models": [{"name": "m", "model": "x"}], "limits": {"max_pixels": -1}}, "max_pixels")]
    for raw, msg in bad:
        with pytest.raises(ServeConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            parse_config(raw, "serve.yaml", tmp_path)
    d = default_config()
    assert d.models[0].model == "random-tiny" and d.label_sets[0].name == "imagenet"
    from visroute.data.text import parse_labels

    names, repeated = parse_labels(None, d.label_sets[0].labels)  # the shipped ImageNet class names
    assert len(names) + len(repeated) == 1000 and len(names) == 998  # repeated names merged, as `classify` does


def test_decoding_matches_the_cli_loader(shared_data, tmp_path):
    from visroute.data.images import load_image

    for name in ("n02096051_Airedale", "n01440764_tench"):  # grayscale and RGB JPEGs
        p = shared_data / "imagenet-sample" / f"{name}.JPEG"
        assert np.array_equal(np.asarray(decode_image(p.read_bytes(), None)), np.asarray(load_image(p)))
    deep = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))  # 16-bit grey
    buf = io.BytesIO()
    deep.save(buf, "PNG")
    (tmp_path / "d.png").write_bytes(buf.getvalue())
    assert np.array_equal(np.asarray(decode_image(buf.getvalue(), None)), np.asarray(load_image(tmp_path / "d.png")))
    for data, msg in ((b"", "empty"), (p.read_bytes()[:3000], "corrupt or truncated"), (b"hello", "not an image")):
        with pytest.raises(BadImageInput, match=msg):
            decode_image(data, None)
    with pytest.raises(BadImageInput, match="over the limit"):
        decode_image(buf.getvalue(), 100)
    assert b64_bytes("data:image/png;base64," + base64.b64encode(b"abc").decode()) == b"abc"
    for bad in ("data:image/png,abc", "a b c", "data:image/png;base64,@@"):
        with pytest.raises(BadImageInput):
            b64_bytes(bad)


def test_a_request_past_its_deadline_gets_504():
    from types import SimpleNamespace

    from starlette.exceptions import HTTPException

    from visroute.serve.cancel import until_answered

    async def receive():  # a client that stays
        await asyncio.sleep(3600)

    request = SimpleNamespace(receive=receive)

    async def main():
        assert await until_answered(request, asyncio.sleep(0, result="fast"), 0.05) == "fast"
        with pytest.raises(HTTPException) as e:
            await until_answered(request, asyncio.sleep(5), 0.05)
        return e.value

    err = asyncio.run(main())
    assert err.status_code == 504 and "deadline of 0.05 s" in err.detail


def test_remote_image_allow_list_is_by_prefix_and_not_fooled():
    from visroute.serve.proxy_images import allowed_url

    ok = ["https://img.example.com/pub/"]
    assert allowed_url("https://img.example.com/pub/a.jpg", ok)
    for url in ("https://img.example.com/private/a.jpg", "https://img.example.com/pub/../private/a.jpg",
                "https://img.example.com/pub/%2e%2e/private", "https://img.example.com.evil.net/pub/a.jpg",
                "https://img.example.com/pub@evil.net/a.jpg", "file:///etc/passwd", "https://evil.net/pub/"):
        assert not allowed_url(url, ok), url
    assert not allowed_url("https://img.example.com/pub/a.jpg", [])  # nothing is allowed by default
    with pytest.raises(ServeConfigError, match="includes a path"):
        parse_config({"models": [{"name": "m", "model": "x"}], "allow_image_urls": ["https://img.example.com"]},
                      "serve.yaml", Path("."))


def test_decoding_in_worker_processes_gives_the_same_inputs(shared_data):
    """``decode_processes: true``: the spawned workers preprocess exactly as the service's own process would."""
    from visroute.data.batches import ImageInputs
    from visroute.models import load_model
    from visroute.serve.decode import _INPUTS, make_pool, prepare

    model = load_model("random-tiny", device="cpu")
    data = (shared_data / "imagenet-sample" / "n02096051_Airedale.JPEG").read_bytes()
    pool = make_pool({"m": ImageInputs(model.preprocess)}, workers=1, processes=True)
    try:
        remote, _ = pool.submit(prepare, "m", data, None, None).result(timeout=120)
        with pytest.raises(BadImageInput, match="not an image"):  # errors come back as the same one-line error
            pool.submit(prepare, "m", b"plain text", None, None).result(timeout=60)
    finally:
        pool.shutdown()
    _INPUTS["m"] = ImageInputs(model.preprocess)
    local, _ = prepare("m", data, None, None)
    assert torch.equal(remote["pixel_values"], local["pixel_values"])
    from visroute.data.images import load_image

    assert torch.equal(local["pixel_values"], model.preprocess(load_image(data))["pixel_values"])  # exact by default
