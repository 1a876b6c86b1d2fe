"""Packaging a user can trust: every imported package is declared, torch is a range, extras exist, types ship."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "visroute"
tomllib = pytest.importorskip("tomllib")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level?) for every absolute import in a file."""
    top_level = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, ast.If) for n in s.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], id(node) in top_level))
    return out


#: subpackages that exist only for one extra: their modules may import that extra's packages at module level
#: (visroute imports the subpackage itself only inside the command or function that needs it)
EXTRA_SUBPACKAGES = {"serve": "serve"}


def _third_party_imports(allow_extra_subpackages: dict | None = None) -> dict[str, set[bool]]:
    """top-level module -> {imported at module level?}; with ``allow_extra_subpackages`` ({extra: declared names}),
    module-level imports in an extra's own subpackage of that extra's packages count as lazy."""
    found: dict[str, set[bool]] = {}
    dists = packages_distributions()
    for path in SRC.rglob("*.py"):
        sub = path.relative_to(SRC).parts[0]
        allowed = (allow_extra_subpackages or {}).get(EXTRA_SUBPACKAGES.get(sub), set())
        for mod, top in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if top and {_norm(d) for d in dists.get(mod, [mod])} & allowed:
                top = False
            if mod in sys.stdlib_module_names or mod in ("visroute", "__future__"):
                continue
            found.setdefault(mod, set()).add(top)
    return found


def test_every_imported_package_is_declared(project):
    declared = {_requirement_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        declared |= {_requirement_name(r) for r in reqs}
    dists = packages_distributions()
    missing = {}
    for mod in _third_party_imports():
        names = {_norm(d) for d in dists.get(mod, [mod])}
        if not names & declared:
            missing[mod] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_optional_packages_are_imported_lazily(project):
    """A package that only an extra brings must not be imported at module level, or `import visroute...` breaks."""
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {e: {_requirement_name(r) for r in reqs} for e, reqs in project["optional-dependencies"].items()}
    dists = packages_distributions()
    eager_optional = [mod for mod, where in _third_party_imports(extras).items()
                      if True in where and not {_norm(d) for d in dists.get(mod, [mod])} & core]
    assert not eager_optional, f"optional packages imported at module level: {eager_optional}"


def test_torch_is_a_range_and_setup_pins_it(project):
    torch_reqs = [r for r in project["dependencies"] if _requirement_name(r) == "torch"]
    assert torch_reqs and "==" not in torch_reqs[0] and ">=" in torch_reqs[0] and "<" in torch_reqs[0].replace("<=", "")
    for reqs in project["optional-dependencies"].values():
        assert not any(_requirement_name(r) in ("torch", "torchvision") and "==" in r for r in reqs)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"torch==\d+\.\d+\.\d+", setup) and re.search(r"torchvision==\d+\.\d+\.\d+", setup)
    assert " -q" not in setup, "setup.sh must show progress, not install quietly"


def test_extras_named_in_readme_and_errors_exist(project):
    extras = set(project["optional-dependencies"])
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"visroute\[([a-z0-9,-]+)\]", readme + (SRC / "errors.py").read_text()))
    named = {e for group in named for e in group.split(",")} | {"llm"}
    assert named <= extras, named - extras
    assert {"llm", "openclip", "datasets", "serve", "router", "test", "dev"} <= extras


def test_types_ship_and_the_version_is_single_sourced(project):
    assert (SRC / "py.typed").is_file()
    assert "version" in project.get("dynamic", []) and "version" not in project


def test_no_source_file_is_over_400_lines():
    """Files stay small enough to read in one sitting; a file that grows past this gets split by what it does."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long
