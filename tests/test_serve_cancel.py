"""Work that ends with its request (issues 22 and 24): a client that leaves frees its admission slot at once and
its upstream call is cancelled; a 504 cancels the work it timed out; slow or idle clients are cut (body deadline
408, keep-alive timeout, header-size limit); /v1/route errors are generic with details in the log; a router bundle
that fails validation stops the service and /readyz never turns green. Real uvicorn processes on 127.0.0.1, a
fault server as the upstream, short deadlines."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.fault_server import FaultServer
from tests.serve_fixtures import API_KEY, ROOT, ROUTER_TEXT, build_router, free_port, start_server

DEADLINE = 4.0  # request_timeout_s: the 504 deadline and the body deadline
SLOTS = 2  # batching.max_queue: the admission limit shared by /v1/route and the proxy


@pytest.fixture(scope="module")
def svc(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("serve-cancel")
    router = build_router(work / "router", shared_data)
    with FaultServer("ok") as fault:
        cfg = {"models": [{"name": "tiny", "model": "random-tiny", "device": "cpu"}],
               "label_sets": [{"name": "two", "labels": ["cat", "dog"]}],
               "routers": [{"name": "demo", "path": str(router)}],
               "endpoints": [{"name": n, "base_url": fault.base_url, "model": n} for n in ("flaky", "small", "large")],
               "batching": {"max_batch_size": 4, "max_wait_ms": 5, "max_queue": SLOTS},
               "limits": {"max_pixels": 4_000_000, "max_body_mb": 8, "request_timeout_s": DEADLINE,
                          "upstream_timeout_s": 60, "keep_alive_s": 1, "max_header_bytes": 4096}}
        (work / "serve.yaml").write_text(json.dumps(cfg))
        server = start_server(work / "serve.yaml", work / "server.log", {"VISROUTE_SERVE_API_KEYS": API_KEY})
        image = base64.b64encode((shared_data / "imagenet-sample" / "n02123045_tabby.JPEG").read_bytes()).decode()
        try:
            yield server, fault, image
        finally:
            fault.stopping.set()  # hanging upstream calls end, so worker threads let the server stop
            server.stop()


def _raw(server, path: str, doc: dict) -> socket.socket:
    """A request sent over a raw socket, left waiting for its answer (the test closes it: the client leaves)."""
    body = json.dumps(doc).encode()
    port = int(server.url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json"
              f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def _post(server, path: str, doc: dict, timeout: float = 30):
    import httpx2

    return httpx2.post(f"{server.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, json=doc,
                       timeout=timeout)


CHAT = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}


def _route_doc(image: str, run: bool = True) -> dict:
    return {"task": ROUTER_TEXT, "options": ["a cat", "a truck"], "image": image, "run": run}


def _wait(cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.05)


def _gone(server, path: str) -> int:
    return sum(1 for line in server.log_lines() if '"client_gone"' in line and path in line)


def test_route_errors_are_generic_and_logged(svc):
    """(First: the hanging calls of the tests below hold worker threads until the upstream lets go.)"""
    server, fault, image = svc
    fault.mode = "malformed"
    try:
        r = _post(server, "/v1/route", _route_doc(image))
    finally:
        fault.mode = "ok"
    assert r.status_code in (400, 502), r.text
    msg = r.json()["error"]["message"]
    assert "127.0.0.1" not in msg and "injected" not in msg and "http" not in msg
    rid = r.headers["x-request-id"]
    assert any(rid in line and "upstream_error" in line for line in server.log_lines())


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route"])
def test_client_leaving_cancels_the_call_and_frees_its_slot(svc, path):
    server, fault, image = svc
    before, gone_before = len(fault.requests), _gone(server, path)
    fault.script = ["hang"] * SLOTS  # the upstream never answers (for 60 s): only the client leaving ends these
    doc = CHAT if path.endswith("completions") else _route_doc(image)
    socks = [_raw(server, path, doc) for _ in range(SLOTS)]
    try:
        _wait(lambda: len(fault.requests) >= before + SLOTS)
        t0 = time.monotonic()
        assert _post(server, "/v1/chat/completions", CHAT).status_code == 503  # every slot is held
    finally:
        for s in socks:
            s.close()
    _wait(lambda: _gone(server, path) >= gone_before + SLOTS, timeout=DEADLINE)
    r = _post(server, "/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text  # the slots came back at once, not after the upstream deadline (60 s)
    assert time.monotonic() - t0 < DEADLINE + 2


def test_504_on_route_frees_the_slot_within_the_deadline(svc):
    server, fault, image = svc
    fault.script = ["hang"] * SLOTS
    t0 = time.monotonic()
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(SLOTS) as pool:
        answers = list(pool.map(lambda _: _post(server, "/v1/route", _route_doc(image)), range(SLOTS)))
    assert [a.status_code for a in answers] == [504] * SLOTS
    assert "deadline" in answers[0].json()["error"]["message"]
    assert time.monotonic() - t0 < DEADLINE + 10
    assert _post(server, "/v1/chat/completions", CHAT).status_code == 200


def test_a_body_trickled_past_the_deadline_gets_408(svc):
    server, _, _ = svc
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE + 20) as s:
        s.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
        t0 = time.monotonic()
        s.settimeout(0.3)
        answer = b""
        while not answer and time.monotonic() - t0 < DEADLINE + 15:
            try:
                answer = s.recv(4096)
            except socket.timeout:
                s.sendall(b" ")  # one byte every 0.3 s: never done, never idle
    took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert DEADLINE - 0.5 < took < DEADLINE + 10, took


def test_idle_keep_alive_connections_are_closed(svc):
    server, _, _ = svc
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        t0, data = time.monotonic(), b""
        while chunk := s.recv(4096):  # the answer (maybe in pieces), then the server closes the idle connection
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in data
        assert time.monotonic() - t0 < 10  # closed after keep_alive_s (1 s), well before our 15 s timeout


def test_uvicorn_gets_the_slow_client_limits():
    """keep_alive_s and max_header_bytes reach uvicorn (the header limit binds where uvicorn parses with h11;
    with httptools installed, uvicorn's default parser, it has no such option)."""
    from visroute.serve.config import Limits
    from visroute.serve.run import uvicorn_options

    opts = uvicorn_options(Limits(keep_alive_s=1.5, max_header_bytes=4096), 7.0)
    assert opts["timeout_keep_alive"] == 1.5 and opts["h11_max_incomplete_event_size"] == 4096
    assert opts["timeout_graceful_shutdown"] == 7.0


def test_a_bundle_that_fails_validation_stops_the_service_and_readyz_stays_red(svc, tmp_path):
    server, _, _ = svc
    good = server.log_path.parent / "router"  # the fixture's trained router
    bad = tmp_path / "bad-router"
    shutil.copytree(good, bad)
    info = json.loads((bad / "router.json").read_text())
    info["costs"] = [0.001, -1.0]  # a negative cost: refused by the bundle check
    (bad / "router.json").write_text(json.dumps(info))
    cfg = {"models": [{"name": "tiny", "model": "random-tiny", "device": "cpu"}],
           "routers": [{"name": "demo", "path": str(bad)}]}
    (tmp_path / "serve.yaml").write_text(json.dumps(cfg))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VISROUTE_SERVE_API_KEYS": API_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "visroute.cli", "serve", "--port", str(port), "--config",
                             str(tmp_path / "serve.yaml")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = set()
    try:
        end = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    seen.add(r.status)
            except urllib.error.HTTPError as e:
                seen.add(e.code)
            except OSError:
                pass
            time.sleep(0.1)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode not in (0, None) and 200 not in seen, (proc.returncode, seen, out[-2000:])
    last = out.strip().splitlines()[-1]
    assert last.startswith("error:") and "cost" in last and "Traceback" not in out, out[-2000:]


# ---------------------------------------------------------------- the mechanism, in process


class _Req:
    def __init__(self, gone_after: float | None):
        self.gone_after = gone_after
        self.url = type("U", (), {"path": "/x"})()

    async def receive(self):
        if self.gone_after is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(self.gone_after)
        return {"type": "http.disconnect"}


@pytest.mark.parametrize("gone_after, timeout, expect", [(0.05, 5, 499), (None, 0.05, 504), (None, 5, "done")])
def test_until_answered_cancels_the_work(gone_after, timeout, expect):
    from starlette.exceptions import HTTPException

    from visroute.serve.cancel import until_answered

    state = {"cancelled": False, "slot": 0}

    async def work(seconds):
        state["slot"] += 1
        try:
            await asyncio.sleep(seconds)
            return "done"
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        finally:
            state["slot"] -= 1

    async def main():
        try:
            out = await until_answered(_Req(gone_after), work(0.01 if expect == "done" else 30), timeout)
        except HTTPException as e:
            return e.status_code
        return getattr(out, "status_code", out)

    assert asyncio.run(main()) == expect
    assert state["slot"] == 0 and state["cancelled"] == (expect != "done")
