"""The README's "HTTP service" examples run as written: its curl commands and its ``openai``-client block, against
the test server (their URL swapped for the server's, ``$KEY`` set to its API key), from the repository root."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.serve_fixtures import API_KEY, ROOT

pytest_plugins = ["tests.serve_fixtures"]
README_URL = "http://127.0.0.1:8000"


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## HTTP service", 1)[1].split("\n## ", 1)[0]


def test_readme_curl_and_openai_examples_run(served, tmp_path):
    blocks = re.findall(r"```(bash|py)\n(.*?)```", section(), flags=re.S)
    curl = [b for kind, b in blocks if kind == "bash" and "curl -s" in b]
    py = [b for kind, b in blocks if kind == "py"]
    assert len(curl) == 1 and len(py) == 1 and curl[0].count("curl -s") == 3
    assert "--open" not in curl[0]  # the block that starts a server is not one of these
    env = {**os.environ, "KEY": API_KEY}
    commands = re.split(r"(?<=[^|\\])\n", curl[0].strip())  # a line ending in a backslash or a pipe goes on
    outputs = []
    for cmd in commands:
        proc = subprocess.run(["bash", "-c", cmd.replace(README_URL, served.url)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.append(json.loads(proc.stdout))
    assert [o.get("error") for o in outputs] == [None] * 3, outputs
    assert outputs[0]["labels"][0] in ("tabby cat", "dog", "goldfish") and len(outputs[0]["labels"]) == 2
    assert sorted(outputs[1]["labels"]) == ["goldfish", "tench"]
    assert outputs[2]["chosen"] == "large" and outputs[2]["answer"] == "cat"

    script = tmp_path / "readme_openai.py"
    script.write_text(py[0].replace(README_URL, served.url))
    served.stub.script += [("text", "B"), ("text", "a tabby cat")]
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["large B", "a tabby cat"]
