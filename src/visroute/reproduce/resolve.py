"""From a recipe and a scale to concrete specs: where the data lives, which model spec each alias is, and what is
missing (``--dry-run``: every model, dataset, task and description file checked, offline, in one list)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from visroute.errors import VisrouteError
from visroute.reproduce.recipe import Recipe, recipes_dir

#: exit code of ``visroute reproduce`` when prerequisites (weights, datasets, files) are missing
EXIT_MISSING = 3
DATA_ENV = "VISROUTE_SHARED_DATA"
_SCHEMES = ("hf:", "torchvision:", "imagefolder:")


class MissingPrerequisites(VisrouteError):
    """Models, datasets or files a recipe needs are not on this machine (the message lists them all)."""

    def __init__(self, missing: list["Requirement"]):
        self.missing = missing
        super().__init__(format_missing(missing))


@dataclass
class Requirement:
    kind: str          # model | dataset | tasks | descriptions | classnames
    name: str          # what the recipe calls it
    spec: str          # the resolved spec or path
    ok: bool
    how: str = ""      # how to get it when missing


def default_data_root() -> Path:
    """``$VISROUTE_SHARED_DATA``, else ``../shared/data`` beside the working directory, else beside the checkout."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    here = Path.cwd() / ".." / "shared" / "data"
    if here.is_dir():
        return here.resolve()
    checkout = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
    return checkout.resolve() if checkout.is_dir() else here


def data_path(spec: str, data_root: Path) -> str:
    """A recipe's dataset / file spec made concrete: ``{data}`` substituted, ``package:`` -> shipped file, a bare
    relative path -> under the data root; ``#options`` are kept."""
    spec = spec.replace("{data}", str(data_root))
    if spec.startswith("package:"):
        return str(recipes_dir() / spec[len("package:"):])
    if spec.startswith(_SCHEMES):
        return spec
    base, sep, opts = spec.partition("#")
    p = Path(base).expanduser()
    return str(p if p.is_absolute() else data_root / p) + sep + opts


def model_spec(spec: str, server_url: str | None = None) -> str:
    """``serve:X`` (a tiny model behind the loopback server) -> the server's OpenAI-compatible spec."""
    if spec.startswith("serve:"):
        if not server_url:
            return spec[len("serve:"):]
        return f"openai-compatible:{server_url}#{spec[len('serve:'):]}"
    return spec


def _model_ok(spec: str, name: str) -> Requirement:
    from visroute.models.registry import is_available_locally
    from visroute.models.spec import parse_model_spec

    local = spec[len("serve:"):] if spec.startswith("serve:") else spec
    try:
        parsed = parse_model_spec(local)
        ok = is_available_locally(local)
    except VisrouteError as e:
        return Requirement("model", name, spec, False, str(e))
    how = ""
    if not ok and parsed.backend == "hf":
        how = f"hf download {parsed.location}  (or point the recipe's model at a local directory)"
    elif not ok:
        how = "download the weights, or run with --scale tiny"
    return Requirement("model", name, spec, ok, how)


def _hub_dataset_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

        return any(r.repo_type == "dataset" and r.repo_id == repo_id for r in scan_cache_dir().repos)
    except (ImportError, CacheNotFound, CorruptedCacheException):
        return False


def _path_ok(spec: str) -> bool:
    """Whether a dataset / file spec points at something that exists here (no dataset is opened or downloaded)."""
    base = spec.partition("#")[0]
    if base.startswith("hf:"):
        loc = base[3:]
        return Path(loc).expanduser().exists() or _hub_dataset_cached(loc)
    if base.startswith("torchvision:"):  # opening it is the only check (visroute never downloads)
        from visroute.data.datasets import load_dataset

        try:
            load_dataset(spec)
            return True
        except VisrouteError:
            return False
    base = base[len("imagefolder:"):] if base.startswith("imagefolder:") else base
    return Path(base).exists()


def _file_ok(spec: str) -> bool:
    """A file, or FILE:KEY (a key of a JSON file)."""
    path = spec
    if not Path(path).exists() and ":" in Path(spec).name:
        path = spec.rsplit(":", 1)[0]
    return Path(path).is_file()


def requirements(recipe: Recipe, scale: str, data_root: Path) -> list[Requirement]:
    """Every model, dataset, task file and description file the recipe needs at ``scale``, checked here."""
    reqs = [_model_ok(m[scale], alias) for alias, m in recipe.models.items()]
    gen = recipe.extra.get("generator")
    if gen and any(m.get("pool") == "generated" for m in recipe.extra.get("methods", {}).values()):
        reqs.append(_model_ok(gen[scale], "description writer"))
    for name, d in recipe.datasets.items():
        entry = d.get(scale) or {}
        how = entry.get("get", "").replace("{data}", str(data_root))
        for key, kind in (("spec", "dataset"), ("test", "dataset"), ("selection", "dataset"), ("tasks", "tasks"),
                          ("from", "dataset")):
            if entry.get(key) and entry[key] != "same":
                spec = data_path(entry[key], data_root)
                label = f"{name} ({key})" if key in ("test", "selection") else name
                reqs.append(Requirement(kind, label, spec, _path_ok(spec), how))
        if entry.get("classnames"):
            spec = data_path(entry["classnames"], data_root)
            reqs.append(Requirement("classnames", name, spec, _file_ok(spec), f"the class-name file under {data_root}"))
        for pool, rel in (d.get("pools") or {}).items():
            spec = data_path(rel, data_root)
            reqs.append(Requirement("descriptions", f"{name} ({pool})", spec, Path(spec).is_file(),
                                    f"the published description files belong in {data_root}/descriptions "
                                    "(see ../shared/data/SOURCES.md for where each comes from)"))
    if scale == "tiny":
        reqs.append(Requirement("dataset", "imagenet-sample (tiny stand-ins)", str(data_root / "imagenet-sample"),
                                (data_root / "imagenet-sample" / "labels.csv").is_file(),
                                "the shared data folder (set --data-root or $VISROUTE_SHARED_DATA)"))
    seen, out = set(), []
    for r in reqs:  # one line per distinct thing
        if (r.kind, r.spec) not in seen:
            seen.add((r.kind, r.spec))
            out.append(r)
    return out


def format_missing(missing: list[Requirement]) -> str:
    """One list: a line per missing thing, and each way to get them said once (after the last thing it gets)."""
    lines = [f"{len(missing)} prerequisite(s) missing on this machine:"]
    for i, r in enumerate(missing):
        lines.append(f"  - [{r.kind}] {r.name}: {r.spec}")
        if r.how and (i + 1 == len(missing) or missing[i + 1].how != r.how):
            lines.append(f"      get it: {r.how}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        lines.append("HF_HUB_OFFLINE is set: nothing can be downloaded here; on a machine with the hub, fetch the "
                     "above, then run the same command without --dry-run (or use --scale tiny here).")
    return "\n".join(lines)
