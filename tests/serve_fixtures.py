"""Fixtures for the ``visroute serve`` tests (a pytest plugin: test modules list it in ``pytest_plugins``, so one
real server is shared by the whole session).

``served`` starts ``visroute serve`` as its own process (uvicorn on a free 127.0.0.1 port) with a config that
has a random-tiny model, two label sets (one with descriptions), an image-aware router over two models whose
endpoints are a scriptable OpenAI-compatible stub, a remote-image allow-list, and a key for one endpoint bound by
the user's own endpoints file (``$VISROUTE_ENDPOINTS``), not by the serve config. (PYTEST_DONT_REWRITE: test
modules import helpers from here before pytest loads it as a plugin; it holds no assertions.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tests.openai_stub import StubServer

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-0123456789abcdef"
ENDPOINT_KEY = "sk-small-endpoint-0123456789"
OPENAI_KEY = "sk-openai-must-not-leak-0123456789"
LABELS = ["tabby cat", "goldfish", "tench", "Airedale Terrier", "garbage truck", "soccer ball", "banana", "volcano",
          "great white shark", "tiger shark"]
#: the router's training tasks share one text, so only the image decides: animals go to 'large', the rest to 'small'
ROUTER_TEXT = "What is in the image?"
ROUTER_TASKS = [("n02123045_tabby", 1), ("n01443537_goldfish", 1), ("n02096051_Airedale", 1),
                ("n03417042_garbage_truck", 0), ("n07753592_banana", 0), ("n04254680_soccer_ball", 0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(config: Path | None, log_path: Path, env: dict | None = None, args: tuple = (),
                 wait_ready: float = 180.0, tries: int = 3) -> Server:
    """``visroute serve`` on a free port, once ready; a port taken by someone else in the meantime is retried."""
    for _ in range(tries - 1):
        try:
            return _start(config, log_path, env, args, wait_ready)
        except PortTaken:
            continue
    return _start(config, log_path, env, args, wait_ready)


class PortTaken(Exception):
    pass


def _start(config, log_path: Path, env, args, wait_ready: float) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "visroute.cli", "serve", "--port", str(port), *args]
    if config is not None:
        cmd += ["--config", str(config)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.time() + wait_ready
    while time.time() < deadline:
        if proc.poll() is not None:
            if "address already in use" in log_path.read_text(errors="replace"):
                raise PortTaken(port)
            pytest.fail(f"visroute serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.25)
    server.stop()
    pytest.fail(f"visroute serve was not ready within {wait_ready:.0f} s:\n{log_path.read_text()[-3000:]}")


def build_router(directory: Path, shared: Path, dead_url: str = "http://127.0.0.1:9/v1") -> Path:
    """An image-aware (text+image) KNN router over 'small' and 'large', trained on real image embeddings; its
    measured pipelines point at a dead URL, so only the serve config's endpoints can make them answer."""
    from visroute.pipeline import PipelineSpec
    from visroute.router.decide.bundle import RouterBundle
    from visroute.router.data.images import encode_paths
    from visroute.router.learn.routers import KNNRouter
    from visroute.tasks.model import task_text

    texts = [task_text(ROUTER_TEXT)] * len(ROUTER_TASKS)
    paths = [str(shared / "imagenet-sample" / f"{img}.JPEG") for img, _ in ROUTER_TASKS]
    Y = np.array([[1.0 - big, float(big)] for _, big in ROUTER_TASKS], np.float32)
    prices = {"*": {"input_per_mtok": 1000.0, "output_per_mtok": 4000.0}}
    specs = {m: PipelineSpec(head="vlm", name=m, vlm=f"openai-compatible:{dead_url}#{m}", max_tokens=8, prices=prices,
                             device="cpu").to_dict() for m in ("small", "large")}
    bundle = RouterBundle(KNNRouter(k=1), "knn", ["small", "large"], np.array([0.001, 0.01]), 0.0, "text+image",
                          "random-tiny", {m: {"mcq": s} for m, s in specs.items()}, {"small": "mcq", "large": "mcq"})
    bundle.router.fit(bundle.featurise(texts, encode_paths("random-tiny", paths)), Y)
    return bundle.save(directory)


class ImageHost:
    """Serves one image over loopback HTTP (for the remote image_url allow-list)."""

    def __init__(self, data: bytes):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Served:
    server: Server
    stub: StubServer
    image_host: ImageHost
    workdir: Path
    labels_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {API_KEY}"}


def write_config(work: Path, shared: Path, stub_url: str, image_url: str, router: Path, **extra) -> Path:
    labels = work / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    (work / "desc.json").write_text(json.dumps({"tabby cat": ["striped fur", "pointed ears", "whiskers"],
                                                "goldfish": ["orange scales", "a round bowl"],
                                                "tench": ["a green fish", "a fisherman's hands"]}))
    batching = extra.pop("batching", {"max_batch_size": 16, "max_wait_ms": 10, "max_queue": 128})
    limits = extra.pop("limits", {"max_pixels": 4_000_000, "max_body_mb": 8, "request_timeout_s": 60})
    cfg = {
        "models": [{"name": "tiny", "model": "random-tiny", "device": "cpu"}],
        "label_sets": [{"name": "animals", "model": "tiny", "labels": "labels.txt"},
                       {"name": "explained", "model": "tiny", "labels": ["tabby cat", "goldfish", "tench"],
                        "head": "descriptions", "descriptions": "desc.json"}],
        "routers": [{"name": "demo", "path": str(router)}],
        "endpoints": [{"name": "small", "base_url": "@small-ep", "model": "tiny-small"},   # keyed by the user's file
                      {"name": "large", "base_url": large_url(stub_url), "model": "tiny-large"}],
        "allow_image_urls": [f"{image_url}/allowed/"],
        "batching": batching, "limits": limits, **extra}
    path = work / "serve.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def large_url(stub_url: str) -> str:
    """Another base URL on the same stub (it answers any path), so the two endpoints are different URLs."""
    return stub_url.replace("/v1", "/large/v1")


def server_env(stub_url: str, work: Path) -> dict:
    """The user's environment: the service's key, and an endpoints file that binds a key to 'small' only.
    OPENAI_API_KEY is set too: it must never reach a server that is not https://api.openai.com."""
    (work / "endpoints.yaml").write_text(json.dumps({"small-ep": {"base_url": stub_url,
                                                                  "api_key_env": "VISROUTE_KEY_SMALL"}}))
    return {"VISROUTE_SERVE_API_KEYS": API_KEY, "VISROUTE_KEY_SMALL": ENDPOINT_KEY,
            "VISROUTE_ENDPOINTS": str(work / "endpoints.yaml"), "OPENAI_API_KEY": OPENAI_KEY}


@pytest.fixture(scope="session")
def served(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("serve")
    with StubServer(default=lambda prompt: "B") as stub:
        host = ImageHost((shared_data / "imagenet-sample" / "n02123045_tabby.JPEG").read_bytes())
        router = build_router(work / "router", shared_data)
        cfg = write_config(work, shared_data, stub.base_url, host.url, router)
        server = start_server(cfg, work / "server.log", server_env(stub.base_url, work))
        try:
            yield Served(server, stub, host, work, work / "labels.txt")
        finally:
            server.stop()
            host.close()
