"""Recipes: the published tables visroute reproduces, as data (YAML shipped in ``visroute/reproduce/recipes``).

A recipe names the paper (arXiv id), the models and datasets at each scale (``tiny``: runs here in minutes on
random-weight models; ``full``: the real run), what to measure, and the published figures it aims at, table and
row by row. Figures that cannot be reproduced (a closed model, an unpublished file) are listed with the reason and
the open substitute measured instead. Loading validates every key, so a typo fails with one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from visroute.errors import VisrouteError
from visroute.pipeline.heads import classify_heads
from visroute.pipeline.spec import nearest_key

SCALES = ("tiny", "full")
KINDS = ("descriptions", "grid")
_COMMON = ("name", "kind", "title", "paper", "notes", "scales", "models", "datasets", "figures", "unreproducible")
_KIND_KEYS = {"descriptions": ("generator", "methods"), "grid": ("pipelines", "prompts", "router")}
_METHOD_KEYS = ("head", "pool", "fallback", "templates", "params", "w_cls", "table", "row")
_FIGURE_KEYS = {"descriptions": ("method", "model", "published", "substitute_for"),
                "grid": ("table", "row", "measure", "pipeline", "better", "worse", "task_types", "of", "published",
                         "published_is", "substitute_for")}
GRID_MEASURES = ("accuracy", "claim", "count", "router", "router_vs_best", "router_cost_ratio")
_UNREPRO_KEYS = ("table", "row", "model", "published", "why", "substitute")


class RecipeError(VisrouteError):
    """A recipe file is malformed or names something it does not define."""


@dataclass
class Recipe:
    name: str
    kind: str
    title: str
    paper: dict
    notes: list[str]
    scales: dict[str, dict]
    models: dict[str, dict[str, str]]
    datasets: dict[str, dict]
    figures: list[dict]
    unreproducible: list[dict]
    extra: dict = field(default_factory=dict)     # kind-specific sections (methods, generator, pipelines, ...)
    path: Path | None = None

    @property
    def arxiv(self) -> str:
        return str(self.paper.get("arxiv", ""))

    def scale(self, scale: str) -> dict:
        if scale not in SCALES:
            raise RecipeError(f"unknown scale '{scale}'{nearest_key(scale, SCALES)} (scales: {', '.join(SCALES)})")
        return self.scales[scale]


def recipes_dir() -> Path:
    return Path(str(resources.files("visroute.reproduce") / "recipes"))


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, by name."""
    return [load_recipe(p) for p in sorted(recipes_dir().glob("*.yaml"))]


def recipe_names() -> list[str]:
    return [p.stem for p in sorted(recipes_dir().glob("*.yaml"))]


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a recipe file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            names = recipe_names()
            raise RecipeError(f"no recipe '{name_or_path}'{nearest_key(str(name_or_path), names)} "
                              f"(recipes: {', '.join(names)}; `visroute reproduce list` describes them)")
    from visroute.safe_load import SafeLoadError, read_yaml

    try:
        raw = read_yaml(path, "recipe")
    except SafeLoadError as e:
        raise RecipeError(str(e)) from None
    return validate(raw, path)


def _check_keys(obj: Any, valid, where: str) -> dict:
    if not isinstance(obj, dict):
        raise RecipeError(f"{where}: expected a mapping, found {type(obj).__name__}")
    for k in obj:
        if k not in valid:
            raise RecipeError(f"{where}: unknown key '{k}'{nearest_key(str(k), valid)} (valid: {', '.join(valid)})")
    return obj


def _need(obj: dict, keys, where: str) -> None:
    missing = [k for k in keys if obj.get(k) in (None, "", [], {})]
    if missing:
        raise RecipeError(f"{where}: missing {', '.join(repr(k) for k in missing)}")


def validate(raw: Any, path: Path) -> Recipe:
    """Check a parsed recipe; every cross-reference (method, model, dataset, pool, substitute) must resolve."""
    where = str(path)
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind not in KINDS:
        raise RecipeError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, found {kind!r}")
    _check_keys(raw, _COMMON + _KIND_KEYS[kind], where)
    _need(raw, ("name", "title", "paper", "scales", "models", "datasets"), where)
    _need(_check_keys(raw["paper"], ("arxiv", "title", "authors", "source"), f"{where} paper"), ("arxiv", "title"),
          f"{where} paper")
    for s in SCALES:
        if not isinstance(raw["scales"].get(s), dict):
            raise RecipeError(f"{where}: scales needs a '{s}' mapping")
    for alias, m in raw["models"].items():
        _need(_check_keys(m, SCALES, f"{where} models.{alias}"), SCALES, f"{where} models.{alias}")
    for name, d in raw["datasets"].items():
        _check_keys(d, ("task_type", "pools") + SCALES, f"{where} datasets.{name}")
        # a descriptions recipe builds its tiny stand-ins from the dataset's pools, so it names no tiny data
        _need(d, ("full", "pools") if kind == "descriptions" else SCALES, f"{where} datasets.{name}")
    extra = {k: raw[k] for k in _KIND_KEYS[kind] if k in raw}
    recipe = Recipe(raw["name"], kind, raw["title"], raw["paper"], list(raw.get("notes") or []), raw["scales"],
                    raw["models"], raw["datasets"], list(raw.get("figures") or []),
                    list(raw.get("unreproducible") or []), extra, path)
    (_validate_descriptions if kind == "descriptions" else _validate_grid)(recipe, where)
    for i, u in enumerate(recipe.unreproducible):
        _need(_check_keys(u, _UNREPRO_KEYS, f"{where} unreproducible[{i}]"), ("table", "row", "why"),
              f"{where} unreproducible[{i}]")
    return recipe


def _validate_descriptions(r: Recipe, where: str) -> None:
    methods = r.extra.get("methods") or {}
    if not methods:
        raise RecipeError(f"{where}: a descriptions recipe needs 'methods'")
    pools = {p for d in r.datasets.values() for p in (d.get("pools") or {})} | {"generated"}
    for mid, m in methods.items():
        at = f"{where} methods.{mid}"
        _need(_check_keys(m, _METHOD_KEYS, at), ("head", "table", "row"), at)
        if m["head"] not in classify_heads():
            raise RecipeError(f"{at}: head '{m['head']}'{nearest_key(m['head'], classify_heads())} "
                              "is not a description head")
        for k in ("pool", "fallback"):
            if m.get(k) and m[k] not in pools:
                raise RecipeError(f"{at}: {k} '{m[k]}' is not a pool of any dataset ({', '.join(sorted(pools))})")
        if m.get("w_cls") not in (None, "sweep", "grid"):
            raise RecipeError(f"{at}: w_cls must be 'sweep' (classname-free head) or 'grid' (disclip head)")
    if any(m.get("pool") == "generated" for m in methods.values()):
        _need(_check_keys(r.extra.get("generator") or {}, ("role",) + SCALES, f"{where} generator"), SCALES,
              f"{where} generator")
    for i, f in enumerate(r.figures):
        at = f"{where} figures[{i}]"
        _need(_check_keys(f, _FIGURE_KEYS["descriptions"], at), ("method", "model", "published"), at)
        _ref(f["method"], methods, at, "method")
        _ref(f["model"], r.models, at, "model")
        _published_datasets(f["published"], r, at)
    for i, u in enumerate(r.unreproducible):
        at = f"{where} unreproducible[{i}]"
        if u.get("substitute"):
            _ref(u["substitute"], methods, at, "substitute method")
        _published_datasets(u.get("published") or {}, r, at)


def _validate_grid(r: Recipe, where: str) -> None:
    pipes = r.extra.get("pipelines") or []
    if not pipes:
        raise RecipeError(f"{where}: a grid recipe needs 'pipelines'")
    names = [p.get("name") for p in pipes if isinstance(p, dict)]
    if len(names) != len(pipes) or len(set(names)) != len(names):
        raise RecipeError(f"{where}: each pipeline needs a unique 'name'")
    types = {d.get("task_type") for d in r.datasets.values()}
    for i, f in enumerate(r.figures):
        at = f"{where} figures[{i}]"
        _need(_check_keys(f, _FIGURE_KEYS["grid"], at), ("table", "row", "measure"), at)
        if f["measure"] not in GRID_MEASURES:
            raise RecipeError(f"{at}: measure '{f['measure']}'{nearest_key(f['measure'], GRID_MEASURES)} is unknown")
        for k in ("pipeline", "better", "worse"):
            if f.get(k) and f[k] not in names:
                raise RecipeError(f"{at}: {k} '{f[k]}' is not a pipeline ({', '.join(names)})")
        for t in f.get("task_types") or []:
            if t not in types:
                raise RecipeError(f"{at}: task type '{t}' is given by no dataset "
                                  f"({', '.join(sorted(map(str, types)))})")
        if f["measure"] in ("router", "router_vs_best", "router_cost_ratio") and not r.extra.get("router"):
            raise RecipeError(f"{at}: measure '{f['measure']}' needs a 'router' section")


def _ref(key: str, table: dict, at: str, what: str) -> None:
    if key not in table:
        raise RecipeError(f"{at}: {what} '{key}'{nearest_key(str(key), list(table))} is not defined")


def _published_datasets(published: Any, r: Recipe, at: str) -> None:
    if not isinstance(published, dict):
        raise RecipeError(f"{at}: 'published' must map dataset names to figures")
    for ds, v in published.items():
        _ref(ds, r.datasets, at, "dataset")
        if not isinstance(v, (int, float)):
            raise RecipeError(f"{at}: published figure for {ds} must be a number, found {v!r}")
