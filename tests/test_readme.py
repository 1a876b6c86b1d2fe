"""The README's Python examples run as written: every ```python block, in order, in one interpreter, from the
repository root (where the README's relative paths point), with an isolated cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_the_python_api_examples():
    code = "\n".join(python_blocks())
    for call in ("visroute.classify(", "visroute.evaluate(", "visroute.Router.load(", "clone(head)"):
        assert call in code


def test_readme_python_blocks_run(tmp_path, shared_data):
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(python_blocks()))
    env = {**os.environ, "VISROUTE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum(f"'{c}'" in lines[0] for c in ("tabby cat", "dog", "goldfish")) == 2   # top-2 labels of the first example
    assert lines[1].split()[1] == "1000"                                      # all 1000 sample images evaluated
    chosen, answer = lines[2].split()[0], lines[2].split()[1]
    assert chosen in ("clip-tiny", "siglip-tiny") and answer in ("dog", "cat", "horse")
