"""The README's routing quick-start runs as written on the shipped RouterBench fixture, and shows what it says:
ARC-Challenge's shared prefix found, the router's hull above the single-model hull, and a cascade trained and
scored on the same curves."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Quick-start on real data"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [ln.split("  #")[0].strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_routing_quickstart_runs(tmp_path):
    cmds = quickstart_commands()
    assert [c.split()[:3] for c in cmds] == [["visroute", "route", w] for w in
                                             ("import", "build", "train", "eval", "ask", "train", "eval")]
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # the README's relative fixture paths, outputs under tmp_path
    env = {**os.environ, "VISROUTE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    out = {}
    for c in cmds:
        argv = [sys.executable, "-m", "visroute.cli", *shlex.split(c)[1:]]
        p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{c}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        out.setdefault(shlex.split(c)[2], []).append(p.stdout + p.stderr)
    out = {k: v[0] for k, v in out.items()} | {f"{k} cascade": v[1] for k, v in out.items() if len(v) > 1}
    assert "600 tasks x 11 models" in out["import"]
    assert re.search(r"arc-challenge: 8\d% of a median text is shared by all \d+ rows", out["build"])
    assert "exceed the embedder's 256-token window" in out["build"]
    quality = json.loads((tmp_path / "rb" / "table" / "quality.json").read_text())
    assert quality["texts"]["arc-challenge"]["prefix_chars"] > 1000 and quality["texts"]["mbpp"]["prefix_chars"] == 0
    rep = json.loads((tmp_path / "rb" / "report" / "report.json").read_text())
    assert rep["aiq"]["router"]["aiq"] > rep["aiq"]["zero_router"]["aiq"]  # the curve above the single-model hull
    assert "zero_router" in out["eval"] and "chosen model:" in out["ask"]
    # the cascade: trained on the records' answers too, scored on the same curves with every call paid for
    assert "strategy cascade: chain" in out["train cascade"]
    rep = json.loads((tmp_path / "rb" / "cascade-report" / "report.json").read_text())
    assert rep["strategy"]["kind"] == "cascade" and {"cascade", "zero_router"} <= set(rep["aiq"])
