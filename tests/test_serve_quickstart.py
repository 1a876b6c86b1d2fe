"""The README's "Serving quick-start" runs as written, from the repository root: its bash block (the demo in the
background, then curl on /readyz, /v1/classify and /v1/route) and its ``openai``-client block (chat completions
through the router, streaming and not, with an image). Ports 8000 and 8001 are the README's; if something else
holds them the test is skipped (counted), never pointed elsewhere."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.serve_fixtures import ROOT


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Serving quick-start", 1)[1].split("\n## ", 1)[0]


def _taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_serving_quickstart_runs_as_written(shared_data):
    blocks = re.findall(r"```(bash|py)\n(.*?)```", section(), flags=re.S)
    assert [k for k, _ in blocks] == ["bash", "py"]
    bash, py = blocks[0][1], blocks[1][1]
    start, rest = bash.split("\n", 1)
    assert start.rstrip().split("#")[0].strip().endswith("examples/serve-demo/run.py &")
    if _taken(8000) or _taken(8001):
        pytest.skip("ports 8000/8001 (the README's) are in use on this machine")
    cmd = start.split("#")[0].strip().rstrip("&").strip()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("VISROUTE_SERVE_API_KEYS", None)
    demo = subprocess.Popen(cmd, shell=True, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = subprocess.run(["bash", "-c", "set -e\n" + rest], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=240)
        assert out.returncode == 0, out.stderr
        docs = [json.loads(line) for line in out.stdout.replace("}{", "}\n{").splitlines() if line.strip()]
        ready, classify, route = docs
        assert ready["status"] == "ready"
        assert classify["label_set"] == "animals" and len(classify["labels"]) == 2
        assert route["router"] == "demo" and route["chosen"] in ("small", "large") and route["raw_answer"] is not None
        res = subprocess.run([sys.executable, "-c", py], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split(" ", 1)[0] in ("small", "large") and res.stdout.endswith("\n")
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
