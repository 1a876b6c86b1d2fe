"""``run_recipe``: one recipe at one scale, end to end, into one run folder.

The folder holds ``run.json`` (what ran, where, how long), the stage outputs (``results/`` or ``grid/`` and
``router/``), ``comparison.json`` (every measured-vs-published row) and ``table.md``; the router recipe adds
``accuracy_cost.png``. Prerequisites are checked first, so a full-scale run on a machine without the weights or
datasets stops at once with the whole list of what is missing (``--dry-run`` prints just that list).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from visroute.errors import VisrouteError
from visroute.reproduce.recipe import Recipe, load_recipe
from visroute.reproduce.resolve import MissingPrerequisites, default_data_root, model_spec, requirements


ENGINES = ("local", "ray")


@dataclass
class RunContext:
    recipe: Recipe
    scale: str
    data_root: Path
    out: Path
    settings: dict
    models: dict[str, str]          # alias -> concrete model spec for this run
    generator: str | None
    engine: Any = None              # a visroute.engine engine, or None (this process)
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)
    progress: bool = True           # tqdm bars (i/N, ETA) over cells; also off when stderr is not a terminal


@dataclass
class RunResult:
    out: Path
    rows: list[dict]
    n_failed: int

    @property
    def table(self) -> Path:
        return self.out / "table.md"


def make_engine(name: str):
    """The engine ``name`` names (``visroute.engine.make_engine``; the local one is an object like Ray's)."""
    if name not in ENGINES:
        raise VisrouteError(f"unknown engine '{name}' ({' or '.join(ENGINES)})")
    from visroute.engine import make_engine as make

    return make(name)


def dry_run(name: str, scale: str = "full", data_root: Path | None = None) -> list:
    """Every prerequisite of the recipe at ``scale`` (``Requirement`` objects; ``ok`` False = missing)."""
    recipe = load_recipe(name)
    recipe.scale(scale)
    return requirements(recipe, scale, Path(data_root) if data_root else default_data_root())


def _served(recipe: Recipe, scale: str) -> dict[str, str]:
    specs = [m[scale] for m in recipe.models.values()] + [(recipe.extra.get("generator") or {}).get(scale) or ""]
    return {s[len("serve:"):]: s[len("serve:"):] for s in specs if s.startswith("serve:")}


def _default_out(recipe: Recipe, scale: str) -> Path:
    return Path("runs") / "reproduce" / f"{recipe.name}-{scale}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_recipe(name: str, scale: str = "tiny", engine: str = "local", out: Path | None = None,
               data_root: Path | None = None, log: Callable[[str], None] = print, progress: bool = True) -> RunResult:
    """Run every stage of a recipe and write the comparison; raises MissingPrerequisites listing what is missing."""
    from visroute.reproduce import report
    from visroute.reproduce.server import allow_endpoint

    recipe = load_recipe(name)
    settings = recipe.scale(scale)
    if engine not in ENGINES:
        raise VisrouteError(f"unknown engine '{engine}' ({' or '.join(ENGINES)})")
    root = Path(data_root) if data_root else default_data_root()
    missing = [r for r in requirements(recipe, scale, root) if not r.ok]
    if missing:
        raise MissingPrerequisites(missing)
    out = Path(out) if out else _default_out(recipe, scale)
    if (out / "run.json").is_file():  # a finished run; an interrupted one (no run.json yet) resumes from its caches
        raise VisrouteError(f"{out} already holds a finished run; give another --out or remove it")
    eng = make_engine(engine)
    out.mkdir(parents=True, exist_ok=True)
    t0, started = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    served = _served(recipe, scale)
    with contextlib.ExitStack() as stack:
        if settings.get("torch_threads"):
            stack.enter_context(_torch_threads(int(settings["torch_threads"])))
        url = None
        if served:
            url = stack.enter_context(allow_endpoint(_loopback(stack, out, served, settings)))
            log(f"loopback OpenAI-compatible server at {url} serving {', '.join(served)}")
        gen = (recipe.extra.get("generator") or {}).get(scale)
        models = {a: model_spec(m[scale], url) for a, m in recipe.models.items()}
        ctx = RunContext(recipe, scale, root, out, settings, models, model_spec(gen, url) if gen else None, eng, log,
                         progress=progress)
        try:
            if recipe.kind == "descriptions":
                from visroute.reproduce.descriptions_run import run_descriptions

                cells = run_descriptions(recipe, ctx)
                rows = report.description_rows(recipe, cells)
            else:
                from visroute.reproduce.grid_run import run_grid_recipe

                cells = run_grid_recipe(recipe, ctx)
                best = _best_single(ctx)
                rows = report.grid_rows(recipe, cells, {"best_single": best})
        finally:
            eng.shutdown()
    run = {"recipe": recipe.name, "arxiv": recipe.arxiv, "scale": scale, "engine": engine, "data_root": str(root),
           "out": str(out), "started": started,
           "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "wall_time_s": round(time.perf_counter() - t0, 2), "models": ctx.models, "generator": ctx.generator,
           "local_server": url, **_versions(), **ctx.extra}
    if "generation" in run:  # counts only: the full reports are inside the generated description files
        keep = ("requests", "cached", "n_failed", "n_unparsable", "error")
        run["generation"] = {k: {**{c: v.get(c) for c in keep}, "n_empty_classes": len(v.get("empty_classes") or [])}
                             for k, v in run["generation"].items()}
    n_failed = sum(r["status"] == "failed" for r in rows)
    run["n_rows"], run["n_failed"] = len(rows), n_failed
    run["n_items"] = report.count_items(out)   # what was measured: items per dataset, read back from the results
    (out / "cells.json").write_text(json.dumps(cells, indent=1, default=str), encoding="utf-8")
    (out / "comparison.json").write_text(json.dumps({"recipe": recipe.name, "scale": scale, "arxiv": recipe.arxiv,
                                                     "rows": rows}, indent=1), encoding="utf-8")
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str), encoding="utf-8")
    sweeps = report.sweep_lines(cells, recipe.extra.get("methods")) if recipe.kind == "descriptions" else None
    report.write(out / "table.md", report.markdown(recipe, rows, run, sweeps))
    return RunResult(out, rows, n_failed)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Torch's intra-op threads for the run (tiny models run fastest on one), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _best_single(ctx: RunContext) -> str | None:
    path = ctx.extra.get("router_report")
    if not path:
        return None
    return json.loads(Path(path).read_text()).get("best_single")


def _versions() -> dict:
    import platform

    import visroute

    out = {"visroute": visroute.__version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "open_clip"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def _loopback(stack, out: Path, served: dict, settings: dict) -> str:
    """Start the loopback server on the port this folder's earlier (interrupted) run used, so the pipeline specs
    recorded in its results name the same URL and the run resumes; a new folder gets a free port, recorded."""
    from visroute.io import atomic_write_json
    from visroute.reproduce.server import LocalServer
    from visroute.safe_load import SafeLoadError, read_json

    record = out / "loopback.json"
    port = 0
    if record.is_file():
        try:
            port = int(read_json(record, "loopback record").get("port") or 0)
        except (SafeLoadError, AttributeError, TypeError, ValueError):
            raise VisrouteError(f"{record} is damaged; give a new --out to start this run afresh") from None
    try:
        url = stack.enter_context(LocalServer(served, max_tokens=int(settings.get("max_tokens", 64)), port=port))
    except OSError:
        raise VisrouteError(f"{out} was started with its loopback server on port {port}, which is now taken, so "
                            "its recorded pipelines cannot be resumed; free the port or give a new --out") from None
    atomic_write_json(record, {"port": int(url.rsplit(":", 1)[1].split("/")[0])})
    return url
