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


# --- shell examples -------------------------------------------------------------------------------------------------
# Every ```bash block of the README and docs/*.md runs, in order, in a copy of the repository's layout (examples/
# copied, ../shared beside it), with `visroute` on PATH and an isolated cache. A block that needs what cannot ship
# (real weights, a served model, an install) is preceded by `<!-- ci: skip (REASON); runnable twin: ... -->`;
# a block that is meant to end with another exit code by `<!-- ci: exit N -->`.
MARKER = re.compile(r"<!--\s*ci:\s*(skip|exit\s+(\d+))(.*?)-->")
#: sections whose examples another test runs against a server it starts
ELSEWHERE = {"HTTP service": "tests/test_serve_readme.py",
             "Serving quick-start": "tests/test_serve_quickstart.py"}
#: files whose examples need a Ray cluster or someone else's server; the engines are tested in tests/test_ray.py
OTHER_DOCS = {"scaling.md"}
#: lines that CI runs itself (.ci/run)
CI_OWN = ("bash scripts/setup.sh", "bash scripts/test.sh")


def shell_blocks(path: Path) -> list[dict]:
    """Each ```bash block with its section, marker (skip / expected exit code) and line number."""
    blocks, section, marker = [], "", None
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = MARKER.search(line)
        if m:
            marker = m
        if line.strip() == "```bash":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            code = "\n".join(lines[i + 1:j])
            blocks.append({"file": path.name, "line": i + 1, "section": section, "code": code,
                           "skip": bool(marker and marker.group(1) == "skip"), "note": marker.group(0) if marker else "",
                           "exit": int(marker.group(2)) if marker and marker.group(2) else 0})
            marker, i = None, j
        elif line.strip() and not m:
            marker = None
        i += 1
    return blocks


def all_shell_blocks() -> list[dict]:
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in OTHER_DOCS)
    return [b for p in [ROOT / "README.md", *docs] for b in shell_blocks(p)]


def test_skipped_examples_say_why_and_have_a_runnable_twin():
    blocks = all_shell_blocks()
    assert len(blocks) >= 10
    for b in blocks:
        if b["skip"]:
            note = b["note"]
            assert "(" in note and ("twin" in note or "install" in note), f"{b['file']}:{b['line']}: {note}"
            assert "huggingface-cli" not in b["code"]   # not installed with huggingface_hub >= 1; `hf` is
    # nothing in the runnable examples is a placeholder
    runnable = "\n".join(b["code"] for b in blocks if not b["skip"] and b["section"] not in ELSEWHERE)
    for placeholder in ("TEST_SPLIT", "TRAIN_SPLIT", " classes.txt", " prices.json", "photo.jpg", "127.0.0.1:8000"):
        assert placeholder not in runnable, placeholder


def _layout(tmp_path: Path) -> Path:
    """tmp/repo with examples/ and tests/fixtures/ copied and tmp/shared -> the shared data, so every relative path resolves as in a
    checkout, but nothing is written into the repository."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples", repo / "examples")
    shutil.copytree(ROOT / "tests" / "fixtures", repo / "tests" / "fixtures")   # shipped data the routing examples read
    (repo / ".venv").mkdir()
    (repo / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    shared = (ROOT / ".." / "shared").resolve()
    if not shared.exists():
        shared = Path(os.environ.get("VISROUTE_SHARED_DATA", ROOT / ".." / "shared" / "data")).resolve().parent
    (tmp_path / "shared").symlink_to(shared)
    return repo


def test_readme_and_docs_shell_blocks_run(tmp_path, shared_data):
    repo = _layout(tmp_path)
    env = {**os.environ, "VISROUTE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ran = 0
    for b in all_shell_blocks():
        if b["skip"] or b["section"] in ELSEWHERE:
            continue
        code = "\n".join(x for x in b["code"].replace("\\\n", " ").splitlines() if not x.strip().startswith(CI_OWN))
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=900)
        where = f"{b['file']}:{b['line']} ({b['section']})"
        assert "Traceback" not in proc.stderr, f"{where}\n{proc.stderr[-3000:]}"
        assert proc.returncode == b["exit"], f"{where}: exit {proc.returncode}\n{code}\n{proc.stderr[-3000:]}"
        ran += 1
    assert ran >= 8


def test_readme_pictures_exist_and_are_made_by_a_committed_script():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    pictures = set(re.findall(r"\((docs/img/[\w.-]+\.png)\)", text))
    assert {"docs/img/web-page.png", "docs/img/route-curve.png", "docs/img/reproduce-accuracy-cost.png"} <= pictures
    script = (ROOT / "scripts" / "docs_figures.sh").read_text(encoding="utf-8")
    for p in pictures:
        assert (ROOT / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
        assert p in script, f"{p} is not made by scripts/docs_figures.sh"
