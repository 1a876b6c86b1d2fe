"""The README's Layout section is the house's floor plan: every module imports only lines beneath its own.

Each entry line of the plan is a floor (a folder, a module, or a comma-separated group of small modules); every
``visroute`` import in ``src/`` (those inside functions too) must land on the same floor or one listed below it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "visroute"


def _floors() -> list[list[str]]:
    """The entry names of the README's Layout block, top floor first (``cli``, ``api.py``, ...)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    floors = []
    for line in block.splitlines():
        m = re.match(r"^  (\S.*?)(?:\s{2,}|$)", line)
        if m:
            floors.append([name.strip().rstrip("/") for name in m.group(1).split(",")])
    return floors


def _unit(module: str) -> str | None:
    """``visroute.router.data.grid`` -> ``router``; ``visroute.io`` -> ``io.py``; ``visroute`` itself -> None."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return parts[1] if (SRC / parts[1]).is_dir() else parts[1] + ".py"


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("visroute"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("visroute"))


def test_the_layout_lists_every_top_level_module():
    listed = {name for floor in _floors() for name in floor}
    present = {p.name for p in SRC.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    present |= {p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert present <= listed, f"missing from the README's Layout: {sorted(present - listed)}"


def test_every_import_runs_down_the_layout():
    floor_of = {name: k for k, floor in enumerate(_floors()) for name in floor}
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        here = floor_of.get(rel.parts[0] if len(rel.parts) > 1 else rel.name)
        if here is None:  # the package's own __init__: its lazy names face the user, it is no floor
            continue
        for line, module in _imports(path):
            target = _unit(module)
            if target is not None and floor_of.get(target, here) < here:
                upward.append(f"{rel}:{line} imports {module}")
    assert not upward, "imports running up the README's Layout:\n" + "\n".join(upward)


def test_the_product_never_imports_testing():
    users = [f"{p.relative_to(SRC)}:{line}" for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "testing"
             for line, module in _imports(p) if module.startswith("visroute.testing")]
    assert not users, users
