"""Hardening, round two (issue 22), continued: total deadlines on the CLI side (a dribbled status line, endless
headers), bounded start-up against a dead Ray address (a stand-in for ray.init), and ``reproduce`` resuming with
a stable loopback URL. Each case asserts the exit code or error, one line, no traceback and bounded time."""

from __future__ import annotations

import pytest

from tests.test_bad_inputs_cli import run_cli


# ---------------------------------------------------------------- 5. total deadlines (CLI side)

class Dribbler:
    """A raw TCP server on 127.0.0.1 that reads a request, then sends its status line (``status``) or endless
    headers (``headers``) one byte every 0.1 s: no HTTP library bounds that with per-read timeouts."""

    def __init__(self, mode: str):
        import socket
        import threading

        self.mode, self.stop = mode, threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:
        data = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 100000 if self.mode == "headers" else \
            b"HTTP/1.1 200 " + b"O" * 100000  # a status line that never ends
        try:
            conn.recv(65536)
            for i in range(len(data)):
                if self.stop.wait(0.1):
                    break
                conn.sendall(data[i : i + 1])
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("mode", ["status", "headers"])
def test_a_dribbled_status_line_or_endless_headers_end_at_the_total_deadline(tmp_path, mode):
    import time

    from visroute.llm import ChatRequest, ResponseCache, load_generator

    with Dribbler(mode) as srv:
        gen = load_generator(f"openai-compatible:{srv.base_url}#m", cache=ResponseCache(tmp_path / "r.sqlite"),
                             timeout=1.0, max_retries=1, backoff_s=0.01, concurrency=1)
        t0 = time.monotonic()
        res = gen.generate([ChatRequest("hi")])[0]
        elapsed = time.monotonic() - t0
    assert not res.ok and "no complete answer within 1 s" in res.error and "\n" not in res.error
    assert elapsed < 2 * 1.0 + 1.5, elapsed  # two attempts of one second each, not 0.1 s per byte forever


def test_cli_describe_timeout_is_total_against_a_dribbling_server(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n")
    with Dribbler("status") as srv:
        res = run_cli(["describe", "--classes", str(classes), "--llm", f"openai-compatible:{srv.base_url}#m",
                       "--output", str(tmp_path / "d.json"), "--no-progress", "--timeout", "2", "--retries", "0"],
                      tmp_path, timeout=60)
    assert res.returncode in (1, 2) and "Traceback" not in res.stderr, res.stderr
    assert "no complete answer within 2 s" in res.stderr
    assert res.elapsed < 20, res.elapsed  # start-up plus one 2 s deadline


# ---------------------------------------------------------------- 6. bounded start-up against a dead Ray address
# ray.init is replaced by a stand-in that never returns (what a dead address does): no real address is contacted.

RAY_STANDIN = """
import sys, threading
from visroute.engine import EngineOptions
import visroute.engine.ray as R

class DeadRay:
    def is_initialized(self):
        return False
    def init(self, **kw):
        threading.Event().wait()  # a cluster that never answers

eng = R.RayEngine.__new__(R.RayEngine)
eng.options, eng.ray, eng._started = EngineOptions(engine="ray", address="ray-head.invalid:6379"), DeadRay(), False
print("connecting", flush=True)
try:
    eng.start()
except R.EngineError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("how", ["timeout", "sigterm"])
def test_a_dead_ray_address_ends_in_one_line(tmp_path, how):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "VISROUTE_RAY_CONNECT_TIMEOUT": "1" if how == "timeout" else "600"}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", RAY_STANDIN], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "connecting"
    if how == "sigterm":
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("start-up against a dead Ray address did not end")
    assert p.returncode == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "ray-head.invalid:6379 did not answer" in lines[0]
    assert ("within 1 s" if how == "timeout" else "SIGTERM") in lines[0]
    assert time.monotonic() - t0 < 15


# ---------------------------------------------------------------- 7. reproduce resumes with a stable upstream URL

def test_reproduce_loopback_keeps_its_port_across_resumes_or_says_use_a_new_folder(tmp_path):
    import contextlib
    import socket

    from visroute.errors import VisrouteError
    from visroute.reproduce.runner import _loopback

    with contextlib.ExitStack() as stack:
        first = _loopback(stack, tmp_path, {}, {})
    with contextlib.ExitStack() as stack:  # killed and re-run into the same folder: the same URL, so specs match
        assert _loopback(stack, tmp_path, {}, {}) == first
    port = int(first.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:  # someone else took the port meanwhile
        s.bind(("127.0.0.1", port))
        s.listen(1)
        with contextlib.ExitStack() as stack, pytest.raises(VisrouteError, match="give a new --out") as e:
            _loopback(stack, tmp_path, {}, {})
    assert "\n" not in str(e.value)
    with contextlib.ExitStack() as stack:  # a new folder gets a port of its own
        assert _loopback(stack, tmp_path / "new", {}, {}).startswith("http://127.0.0.1:")
