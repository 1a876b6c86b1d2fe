"""Running a ``descriptions`` recipe (DisCLIP's tables): every method x model x dataset through ``evaluate``.

Each cell is one ``PipelineSpec`` evaluated on cached features; class-name weights are chosen as the paper does
(the best on the test set: a sweep inside the classname-free head, a grid of runs for the selection head). A cell
that fails is recorded with its one-line error and the rest still run.
"""

from __future__ import annotations

from pathlib import Path

from visroute.errors import VisrouteError
from visroute.eval.results import slug
from visroute.reproduce.resolve import data_path


class NotApplicable(VisrouteError):
    """A method that does not apply to a dataset (e.g. no CuPL prompts were published for it): not run, no error."""


def prepare_datasets(recipe, ctx) -> dict[str, dict]:
    """Per dataset: test and selection specs, a class-name file (or None) and the description pools' paths."""
    from visroute.reproduce.data import common_classnames, holdout_split, standin_dataset

    s, out = ctx.settings, {}
    for i, (name, d) in enumerate(recipe.datasets.items()):
        pools = {p: data_path(rel, ctx.data_root) for p, rel in (d.get("pools") or {}).items()}
        where = ctx.out / "data" / slug(name)
        if ctx.scale == "tiny":
            k, per = int(s["classes"]), int(s["test_per_class"]) + int(s["selection_per_class"])
            names = common_classnames(list(pools.values()), k)
            test, sel = standin_dataset(where, ctx.data_root, names, int(s["test_per_class"]),
                                        int(s["selection_per_class"]), offset=i * k * per)
            out[name] = {"test": test, "selection": sel, "classnames": None, "pools": pools}
            continue
        entry = d["full"]
        classnames = data_path(entry["classnames"], ctx.data_root) if entry.get("classnames") else None
        test = data_path(entry["test"], ctx.data_root)
        if entry.get("selection") == "same":
            names = _read_names(classnames) if classnames else None
            test, sel = holdout_split(test, int(entry.get("selection_per_class", 1000)), where, names)
        else:
            sel = data_path(entry["selection"], ctx.data_root)
        out[name] = {"test": test, "selection": sel, "classnames": classnames, "pools": pools}
    return out


def _read_names(spec: str) -> list[str]:
    from visroute.data.text import read_string_list

    return read_string_list(spec, "class names", VisrouteError)


def generate_pools(recipe, ctx, datasets: dict) -> None:
    """The ``generated`` pool: descriptions written by the recipe's open LLM for each dataset's classes."""
    from visroute.data.datasets import load_dataset
    from visroute.descriptions.generate import describe_classes

    if not any(m.get("pool") == "generated" for m in recipe.extra["methods"].values()):
        return
    for name, d in datasets.items():
        try:
            names = load_dataset(d["test"], _read_names(d["classnames"]) if d["classnames"] else None).classnames
            classes = ctx.out / "descriptions" / f"{slug(name)}.classes.txt"
            classes.parent.mkdir(parents=True, exist_ok=True)
            classes.write_text("".join(c + "\n" for c in names), encoding="utf-8")
            target = ctx.out / "descriptions" / f"{slug(name)}.generated.json"
            _dset, report = describe_classes(str(classes), ctx.generator, target, style="dclip",
                                             max_tokens=int(ctx.settings["max_tokens"]), engine=ctx.engine)
            d["pools"]["generated"] = str(target)
            d["generation"] = report.as_dict()
            ctx.log(f"descriptions for {name}: {report.requests} requests, {len(report.unparsable)} unparsable, "
                    f"{len(report.empty_classes)} classes without a description")
        except VisrouteError as e:
            d["generation_error"] = str(e)
            ctx.log(f"descriptions for {name} failed: {e}")


def method_spec(method: dict, model_spec: str, d: dict, settings: dict):
    """The pipeline spec one recipe method describes on one dataset (w_cls filled in by the caller)."""
    from visroute.pipeline.heads import HEADS
    from visroute.pipeline.spec import PipelineSpec

    head, params = method["head"], dict(method.get("params") or {})
    entry = HEADS[head]
    if "repeats" in entry.params:
        params.update(repeats=int(settings.get("repeats", 5)), seed=0)
    if entry.selection:
        params["selection_dataset"] = d["selection"]
    if method.get("w_cls") == "sweep":
        params["w_cls_sweep"] = [float(w) for w in settings["w_cls_sweep"]]
    pool = method.get("pool")
    if pool == "generated" and d.get("generation_error"):
        raise VisrouteError(f"description generation failed: {d['generation_error']}")
    if pool and pool not in d["pools"]:
        raise NotApplicable(f"no published '{pool}' description file for this dataset")
    templates = tuple(method["templates"]) if method.get("templates") else None
    return PipelineSpec(head=head, model=model_spec, templates=templates,
                        descriptions=d["pools"][pool] if pool else None,
                        fallback_descriptions=d["pools"].get(method["fallback"]) if method.get("fallback") else None,
                        device="auto", params=params)


def measure_cell(model, spec, d: dict, out: Path, w_grid: list[float] | None, ctx) -> dict:
    """Top-1 accuracy (percent) of one spec on one dataset; with ``w_grid`` the best over class-name weights."""
    from visroute.eval.run import RunOptions, evaluate

    cache = ctx.engine.feature_cache()
    runs = []
    for w in (w_grid or [None]):
        s = spec if w is None else spec.replace(params={**spec.params, "w_cls": float(w)})
        target = out if w is None else out / f"w_cls-{w:g}"
        doc = evaluate(s, d["test"], RunOptions(output=target, workers=0, classnames=d["classnames"], cache=cache),
                       model=model)
        runs.append((w, doc))
    detail: dict = {"n_images": runs[0][1]["visroute"]["n_evaluated"], "results": [doc["_file"] for _, doc in runs]}
    if w_grid:
        detail["w_cls"] = [{"w_cls": w, "acc1": doc["metrics"]["acc1"]} for w, doc in runs]
        best = max(detail["w_cls"], key=lambda r: r["acc1"])
        detail["best_w_cls"] = best["w_cls"]
        return {"value": 100.0 * best["acc1"], **detail}
    doc = runs[0][1]
    sweep = doc["visroute"]["metrics_extra"].get("w_cls_sweep")
    if sweep:
        best = max(sweep, key=lambda r: r["acc1"])
        return {"value": 100.0 * best["acc1"], "best_w_cls": best["w_cls"], "w_cls": sweep, **detail}
    extra = doc["visroute"]["metrics_extra"]
    if doc["visroute"].get("n_fallback_classes"):
        detail["n_fallback_classes"] = int(doc["visroute"]["n_fallback_classes"])
        detail["n_classes"] = len(doc["visroute"]["classnames"])
    if "acc1_std" in extra:
        detail["acc1_std"] = 100.0 * extra["acc1_std"]
    return {"value": 100.0 * doc["metrics"]["acc1"], **detail}


def run_descriptions(recipe, ctx) -> list[dict]:
    """All cells of the recipe: ``{"method", "model", "dataset", "value" | "error", ...}`` each."""
    from visroute.models import load_model

    datasets = prepare_datasets(recipe, ctx)
    generate_pools(recipe, ctx, datasets)
    from tqdm import tqdm

    methods, cells = recipe.extra["methods"], []
    bar = tqdm(total=len(recipe.models) * len(datasets) * len(methods), desc=recipe.name, unit="cell",
               dynamic_ncols=True, disable=None if ctx.progress else True)
    for alias in recipe.models:
        spec_text = ctx.models[alias]
        try:
            model = load_model(spec_text)
        except VisrouteError as e:
            cells += [{"method": m, "model": alias, "dataset": n, "error": f"model: {e}"}
                      for m in methods for n in datasets]
            bar.update(len(methods) * len(datasets))
            continue
        for name, d in datasets.items():
            for mid, method in methods.items():
                bar.set_postfix_str(f"{alias} / {name} / {mid}", refresh=False)
                cell = {"method": mid, "model": alias, "dataset": name}
                try:
                    spec = method_spec(method, spec_text, d, ctx.settings)
                    grid = [float(w) for w in ctx.settings["w_cls_grid"]] if method.get("w_cls") == "grid" else None
                    cell.update(measure_cell(model, spec, d, ctx.out / "results" / slug(alias) / slug(name) / mid,
                                             grid, ctx))
                except NotApplicable as e:
                    cell["skipped"] = str(e)
                except VisrouteError as e:
                    cell["error"] = str(e)
                cells.append(cell)
                bar.update(1)
    bar.close()
    ctx.extra["generation"] = {n: d.get("generation") or {"error": d.get("generation_error")}
                               for n, d in datasets.items() if "generated" in d["pools"] or d.get("generation_error")}
    return cells
