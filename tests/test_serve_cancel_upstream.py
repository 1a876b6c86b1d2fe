"""A 504, or a client leaving, stops the work behind the request (issue 24, point 3): the upstream call in progress
is aborted (the upstream sees its connection close within seconds, not when it would have answered), a cascade
makes no further call, a failed attempt is not retried, and /metrics and the log show the cancellation. Against a
real ``visroute serve`` process and a slow upstream on 127.0.0.1 that records when its client hangs up; then the
same mechanism in process: the micro-batcher drops a queued image whose request was answered, a generator's call
is aborted by its token, a local generate stops at its next token."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time

import pytest

from tests.serve_fixtures import API_KEY, ROUTER_TEXT, build_router, start_server
from tests.slow_upstream import SlowUpstream
from visroute.llm.cancel import Cancelled, CancelToken, bound

DEADLINE = 3.0  # request_timeout_s: the 504 of /v1/route
UPSTREAM = 3.0  # upstream_timeout_s: the proxy's 504
HOLD = 15.0  # how long the upstream would take: far past both deadlines
PROMPT = 3.0  # the upstream must see its connection close this soon after the answer (it would take HOLD)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("serve-cancel-upstream")
    router = build_router(work / "router", shared_data)
    info = json.loads((router / "router.json").read_text())
    info["strategy"] = {"kind": "cascade", "chain": [0, 1], "threshold": 2.0, "confidence": "router"}  # never stops
    (router / "router.json").write_text(json.dumps(info))
    with SlowUpstream("hold", HOLD) as up:
        cfg = {"models": [{"name": "tiny", "model": "random-tiny", "device": "cpu"}],
               "label_sets": [{"name": "two", "labels": ["cat", "dog"]}],
               "routers": [{"name": "cascade", "path": str(router)}],
               "endpoints": [{"name": "small", "base_url": up.base_url, "model": "slow-small"},
                             {"name": "large", "base_url": up.base_url, "model": "slow-large"}],
               "batching": {"max_batch_size": 4, "max_wait_ms": 5, "max_queue": 8},
               "limits": {"max_pixels": 4_000_000, "max_body_mb": 8, "request_timeout_s": DEADLINE,
                          "upstream_timeout_s": UPSTREAM}}
        (work / "serve.yaml").write_text(json.dumps(cfg))
        server = start_server(work / "serve.yaml", work / "server.log", {"VISROUTE_SERVE_API_KEYS": API_KEY})
        image = base64.b64encode((shared_data / "imagenet-sample" / "n02123045_tabby.JPEG").read_bytes()).decode()
        try:
            yield server, up, image
        finally:
            up.stopping.set()
            server.stop()


def _post(server, path: str, doc: dict):
    import httpx2

    return httpx2.post(f"{server.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, json=doc, timeout=30)


def _raw(server, path: str, doc: dict) -> socket.socket:
    body = json.dumps(doc).encode()
    s = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json"
              f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def _metric(server, name: str, **labels) -> float:
    import httpx2

    text = httpx2.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in want))


def _route_doc(image: str) -> dict:
    return {"task": ROUTER_TEXT, "options": ["a cat", "a truck"], "image": image, "run": True}


def _chat(stream: bool = False) -> dict:
    return {"model": "small", "stream": stream, "messages": [{"role": "user", "content": f"hi {time.time()}"}]}


def _new_call(up, before: int, timeout: float = 10.0) -> int:
    assert up.wait_for(lambda: len(up.calls) > before, timeout), "the upstream got no call"
    return up.calls[before][0]


def _logged(server, event: str, rid: str | None = None) -> list[dict]:
    docs = []
    for line in server.log_lines():
        if line.startswith("{") and f'"{event}"' in line:
            doc = json.loads(line)
            if doc.get("event") == event and (rid is None or doc.get("request_id") == rid):
                docs.append(doc)
    return docs


def test_a_504_on_route_aborts_the_upstream_call_and_the_cascade_stops(svc):
    server, up, image = svc
    before = len(up.calls)
    cancelled0 = _metric(server, "visroute_cancelled_total", path="/v1/route", reason="deadline")
    t0 = time.monotonic()
    r = _post(server, "/v1/route", _route_doc(image))
    answered = time.monotonic()
    assert r.status_code == 504, r.text
    assert DEADLINE - 0.3 < answered - t0 < DEADLINE + 3
    n = _new_call(up, before, 1)
    assert up.calls[before][1] == "slow-small"  # the cascade's first model was being called
    assert up.wait_for(lambda: n in up.closed, PROMPT), "the upstream call kept running after the 504"
    assert n not in up.answered and up.closed[n] - answered < PROMPT
    time.sleep(1.0)  # a retry, or the cascade's next model ('slow-large'), would have been called by now
    assert [c[1] for c in up.calls[before:]] == ["slow-small"]
    rid = r.headers["x-request-id"]
    assert _logged(server, "cancelled", rid)[0]["reason"] == "deadline"
    assert up.wait_for(lambda: _logged(server, "cancelled_work_ended", rid), PROMPT)
    assert _logged(server, "cancelled_work_ended", rid)[0]["after_s"] < PROMPT
    assert _metric(server, "visroute_cancelled_total", path="/v1/route", reason="deadline") == cancelled0 + 1
    assert _metric(server, "visroute_cancel_stop_seconds_count", path="/v1/route") >= 1


def test_a_client_leaving_route_aborts_the_upstream_call(svc):
    server, up, image = svc
    before = len(up.calls)
    s = _raw(server, "/v1/route", _route_doc(image))
    n = _new_call(up, before)
    s.close()
    left = time.monotonic()
    assert up.wait_for(lambda: n in up.closed, PROMPT), "the upstream call kept running after the client left"
    assert up.closed[n] - left < PROMPT and n not in up.answered
    time.sleep(0.5)
    assert len(up.calls) == before + 1  # no retry, no next model
    assert up.wait_for(lambda: _metric(server, "visroute_cancelled_total", path="/v1/route", reason="client_gone") >= 1,
                       PROMPT)


def test_a_504_on_the_proxy_closes_the_upstream_connection(svc):
    server, up, _ = svc
    before = len(up.calls)
    r = _post(server, "/v1/chat/completions", _chat())
    answered = time.monotonic()
    assert r.status_code == 504, r.text
    n = _new_call(up, before, 1)
    assert up.wait_for(lambda: n in up.closed, PROMPT), "the upstream call kept running after the 504"
    assert up.closed[n] - answered < PROMPT and len(up.calls) == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_leaving_the_proxy_closes_the_upstream_connection(svc, stream):
    """Non-streaming: the client leaves while the upstream holds its answer; streaming: while events are flowing."""
    server, up, _ = svc
    before = len(up.calls)
    gone0 = _metric(server, "visroute_cancelled_total", path="/v1/chat/completions", reason="client_gone")
    up.script = ["drip" if stream else "hold"]
    s = _raw(server, "/v1/chat/completions", _chat(stream))
    n = _new_call(up, before)
    if stream:  # read until the first event has come through the proxy
        got = b""
        while b"data:" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")
    s.close()
    left = time.monotonic()
    assert up.wait_for(lambda: n in up.closed, PROMPT), "the upstream call kept running after the client left"
    assert up.closed[n] - left < PROMPT and n not in up.answered
    assert up.wait_for(lambda: _metric(server, "visroute_cancelled_total", path="/v1/chat/completions",
                                       reason="client_gone") == gone0 + 1, PROMPT)


def test_a_stream_whose_upstream_sends_no_headers_gets_504_and_is_closed(svc):
    server, up, _ = svc
    before = len(up.calls)
    up.script = ["hold"]
    t0 = time.monotonic()
    r = _post(server, "/v1/chat/completions", _chat(stream=True))
    answered = time.monotonic()
    assert r.status_code == 504, r.text
    assert UPSTREAM - 0.3 < answered - t0 < UPSTREAM + 3
    n = _new_call(up, before, 1)
    assert up.wait_for(lambda: n in up.closed, PROMPT), "the upstream call kept running after the 504"
    assert "127.0.0.1" not in r.json()["error"]["message"]


def test_cancelled_work_leaves_no_traceback_in_the_log(svc):
    """(After the tests above:) a cancelled thread's Cancelled, an aborted socket, a closed stream are all quiet."""
    server, _, _ = svc
    text = "\n".join(server.log_lines())
    assert "Traceback" not in text and "never retrieved" not in text, text[-3000:]


# ---------------------------------------------------------------- the mechanism, in process


class _Req:
    url = type("U", (), {"path": "/x"})()

    async def receive(self):
        await asyncio.sleep(3600)


def test_a_queued_image_answered_504_is_dropped_before_its_forward():
    """While one batch is in its forward pass, a request waiting for the next one times out: it is never computed;
    the request queued behind it is."""
    import numpy as np
    from starlette.exceptions import HTTPException

    from visroute.serve.batching import MicroBatcher
    from visroute.serve.cancel import until_answered

    seen, drops = [], []

    def encode(items):
        seen.append(list(items))
        time.sleep(0.6 if items[0] == "a" else 0.0)
        return np.zeros((len(items), 2), np.float32)

    async def main():
        b = MicroBatcher("m", encode, max_batch_size=4, max_wait_ms=0, max_queue=8, on_drop=drops.append)
        b.start()
        first = asyncio.ensure_future(b.submit("a"))
        await asyncio.sleep(0.2)  # 'a' is in its forward pass
        with pytest.raises(HTTPException) as e:
            await until_answered(_Req(), b.submit("b"), 0.1)
        assert e.value.status_code == 504
        last = asyncio.ensure_future(b.submit("c"))
        await asyncio.wait_for(asyncio.gather(first, last), 10)
        await b.stop()
        return b.dropped

    assert asyncio.run(main()) == 1
    assert seen == [["a"], ["c"]] and drops == [1]


def test_a_cancelled_token_aborts_a_generator_call_without_retrying():
    from visroute.llm.client import ChatRequest, OpenAICompatibleGenerator

    with SlowUpstream("hold", HOLD) as up:
        gen = OpenAICompatibleGenerator(up.base_url, "m", timeout=60, max_retries=3, concurrency=1)
        tok = CancelToken()
        threading.Timer(0.5, tok.cancel, ("deadline",)).start()
        t0 = time.monotonic()
        with bound(tok), pytest.raises(Cancelled):
            gen.generate([ChatRequest("hi")])
        assert time.monotonic() - t0 < 0.5 + PROMPT
        assert up.wait_for(lambda: 0 in up.closed, PROMPT) and len(up.calls) == 1
        with bound(tok), pytest.raises(Cancelled):  # nothing is sent for a cancelled request
            gen.generate([ChatRequest("again")])
        assert len(up.calls) == 1


def test_a_cancelled_request_stops_waiting_for_an_endpoint_slot():
    from visroute.llm.http import EndpointLimiter

    lim, tok, out = EndpointLimiter(1), CancelToken(), []

    def waiter():
        try:
            with bound(tok), lim:
                out.append("got a slot")
        except Cancelled:
            out.append("cancelled")

    with lim:  # the one slot is taken
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        assert out == [] and t.is_alive()
        tok.cancel("deadline")
        t.join(5)
        assert out == ["cancelled"] and lim.in_flight == 1


class _CancelsAtRead(CancelToken):
    """A token that cancels itself the ``after``-th time a generate step asks about it."""

    def __init__(self, after: int):
        super().__init__()
        self.reads, self.after = 0, after

    @property
    def cancelled(self) -> bool:
        self.reads += 1
        if self.reads == self.after:
            self.cancel("deadline")
        return CancelToken.cancelled.fget(self)


@pytest.mark.parametrize("spec", ["random-tiny:llama", "random-tiny:llava"])
def test_a_local_generate_stops_at_its_next_token(spec):
    """The token is asked once per generated token: set at the third, generation stops there and the request raises
    Cancelled instead of returning a cut answer; without a token the same request runs on (and is answered)."""
    from PIL import Image

    from visroute.llm.cancel import stopping_criteria
    from visroute.llm.client import ChatRequest, load_generator

    gen = load_generator(spec, max_tokens=64)
    req = ChatRequest("hello there", images=[Image.new("RGB", (32, 32), "red")] if spec.endswith("llava") else [])
    tok = _CancelsAtRead(after=3)
    with bound(tok), pytest.raises(Cancelled):
        gen.generate([req])
    assert tok.reads == 3
    assert stopping_criteria() is None
    res = gen.generate([req])[0]
    assert res.ok and res.output_tokens > 3
