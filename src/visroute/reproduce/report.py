"""Measured beside published: the comparison rows of one run, as JSON and as a Markdown table.

Every row has every cell filled: a figure the paper does not give reads "not published" (or "unknown" when the
paper's table could not be obtained), a method that does not apply reads "not run" with the reason, and a figure
that cannot be reproduced is listed with why and the open substitute measured instead.
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = ("table", "row", "model", "column", "measured", "published", "delta", "note")
HEADERS = ("Row", "Model", "Column", "Measured", "Published", "Δ (measured − published)", "Note")
UNKNOWN = "unknown (not obtained)"


def _num(v, digits: int | str) -> str:
    """``digits``: decimals, or a format such as ".3g" (costs: a few significant digits)."""
    if not isinstance(v, (int, float)):
        return str(v)
    return f"{v:{digits}}" if isinstance(digits, str) else f"{v:.{digits}f}"


def _delta(measured, published, digits: int | str) -> str:
    if isinstance(measured, (int, float)) and isinstance(published, (int, float)):
        return f"{measured - published:+{digits}}" if isinstance(digits, str) else f"{measured - published:+.{digits}f}"
    return "n/a"


def _row(table, row, model, column, measured, published, digits, note, status, published_text=None) -> dict:
    return {"table": table, "row": row, "model": model, "column": column,
            "measured": _num(measured, digits) if status == "measured" else measured,
            "published": published_text or _num(published, digits),
            "delta": _delta(measured, published, digits) if status == "measured" else "n/a",
            "note": note or "-", "status": status,
            "measured_value": measured if isinstance(measured, (int, float)) else None,
            "published_value": published if isinstance(published, (int, float)) else None}


def description_rows(recipe, cells: list[dict]) -> list[dict]:
    """Rows of a descriptions recipe: method x model x dataset, then the figures that cannot be reproduced."""
    by = {(c["method"], c["model"], c["dataset"]): c for c in cells if "method" in c}
    published = {(f["method"], f["model"]): f for f in recipe.figures}
    methods, rows = recipe.extra["methods"], []
    for mid, m in methods.items():
        for alias in recipe.models:
            fig = published.get((mid, alias))
            for ds in recipe.datasets:
                c = by.get((mid, alias, ds), {"error": "not measured"})
                p = (fig or {}).get("published", {}).get(ds)
                notes = [f"substitute for {fig['substitute_for']}"] if fig and fig.get("substitute_for") else []
                if "best_w_cls" in c:
                    notes.append(f"best w_cls = {c['best_w_cls']:g}")
                if c.get("n_fallback_classes"):
                    notes.append(f"{c['n_fallback_classes']} of {c['n_classes']} classes had no description "
                                 "(class-name prompt used)")
                if "acc1_std" in c:
                    notes.append(f"std over repeats {c['acc1_std']:.2f}")
                status, measured = ("measured", c["value"]) if "value" in c else \
                    ("not run", "not run") if "skipped" in c else ("failed", "failed")
                notes += [c[k] for k in ("skipped", "error") if k in c]
                rows.append(_row(m["table"], m["row"], alias, ds, measured, p if p is not None else "not published",
                                 2, "; ".join(notes), status))
    for u in recipe.unreproducible:
        sub = u.get("substitute")
        for ds, p in (u.get("published") or {"-": None}).items():
            sc = by.get((sub, u.get("model"), ds), {})
            subst = (f"open substitute: {methods[sub]['row']} = {sc['value']:.2f}" if "value" in sc else
                     f"open substitute: {methods[sub]['row']}" if sub else "no open substitute")
            rows.append(_row(u["table"], u["row"], u.get("model", "-"), ds, "not reproducible",
                             p if p is not None else UNKNOWN, 2, f"{u['why']}; {subst}", "not reproducible"))
    return rows


def grid_rows(recipe, cells: list[dict], extra: dict) -> list[dict]:
    """Rows of a grid recipe: one per figure value, then the figures that cannot be reproduced."""
    rows = []
    for i, f in enumerate(recipe.figures):
        model = f.get("pipeline") or (f"{f['better']} vs {f['worse']}" if f["measure"] == "claim" else "all")
        pub = f.get("published")
        for c in [c for c in cells if c.get("figure") == i] or [{"column": "-", "error": "not measured"}]:
            notes = [c.get("detail")] if c.get("detail") else []
            if f.get("published_is"):
                notes.append(f"published figure is a {f['published_is']}")
            if f.get("substitute_for"):
                notes.append(f"substitute for {f['substitute_for']}")
            if "error" in c:
                status, measured = "failed", "failed"
                notes.append(c["error"])
            elif "text" in c:
                status, measured = "measured", c["text"]
            elif c.get("value") is None:
                status, measured = "failed", "failed"
                notes.append("no value (e.g. a zero cost to divide by)")
            else:
                status, measured = "measured", c["value"]
            label = f["row"] + (f": {c['row']}" if c.get("row") else "")
            digits = 0 if f["measure"] == "count" else ".3g" if "cost" in c["column"] else 3
            row = _row(f["table"], label, model, c["column"], measured, pub if pub is not None else UNKNOWN, digits,
                       "; ".join(notes), status)
            if isinstance(measured, str) and status == "measured":
                row["measured"] = measured
            rows.append(row)
    for u in recipe.unreproducible:
        sub = extra.get("best_single") if u.get("substitute") == "best_single" else u.get("substitute")
        note = f"{u['why']}; open substitute: " + (f"{sub} (best single pipeline of the grid)" if sub else "none")
        rows.append(_row(u["table"], u["row"], u.get("model", "-"), "-", "not reproducible", UNKNOWN, 3, note,
                         "not reproducible"))
    return rows


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(recipe, rows: list[dict], run: dict, sweeps: list[str] | None = None) -> str:
    """The run's comparison table: one section per paper table, then what could not be reproduced, then notes."""
    p = recipe.paper
    scale = recipe.scales[run["scale"]]
    out = [f"# {recipe.title}", "",
           f"Paper: *{p['title']}* (arXiv:{p['arxiv']}){', ' + p['authors'] if p.get('authors') else ''}.",
           f"Published figures: {p.get('source', 'see the recipe')}", "",
           f"Recipe `{recipe.name}`, scale `{run['scale']}`, engine `{run['engine']}`, data root `{run['data_root']}`, "
           f"{run['finished']}.", "", f"Scale: {' '.join(str(scale.get('about', '')).split())}", "",
           "Δ is measured − published; accuracies are percent where the paper gives percent.", ""]
    out += measured_lines(run)
    models = run.get("models") or {}
    stand_in = run["scale"] != "full"
    name = (lambda a: f"{a} (stand-in: {models[a]})" if stand_in and models.get(a) and models[a] != a else a)  # noqa: E731
    tables = list(dict.fromkeys(r["table"] for r in rows if r["status"] != "not reproducible"))
    for t in tables:
        out += [f"## {t}", "", "| " + " | ".join(HEADERS) + " |", "|---|---|---|---:|---:|---:|---|"]
        out += ["| " + " | ".join(_cell(name(r[k]) if k == "model" else r[k]) for k in COLUMNS[1:]) + " |"
                for r in rows if r["table"] == t and r["status"] != "not reproducible"]
        out.append("")
    gone = [r for r in rows if r["status"] == "not reproducible"]
    if gone:   # one line per reason, listing the figures it applies to
        out += ["## Not reproducible here (with the open substitute)", "",
                "| Why, and the open substitute | Figures (table / row / model / column: published) |", "|---|---|"]
        by_reason: dict[str, list[str]] = {}
        for r in gone:
            by_reason.setdefault(r["note"], []).append(
                f"{r['table']} / {r['row']} / {r['model']} / {r['column']}: {r['published']}")
        out += [f"| {_cell(why)} | {_cell('; '.join(figs))} |" for why, figs in by_reason.items()]
        out.append("")
    if sweeps:
        out += ["## w_cls sweeps (measured, top-1 %)", ""] + sweeps + [""]
    out += ["## Notes", ""] + [f"- {n}" for n in recipe.notes] + \
        [f"- Outputs: `comparison.json` (these rows), `run.json`, `results/` or `grid/`"
         + (", `router/`, `accuracy_cost.png`" if recipe.extra.get("router") else "") + "."]
    return "\n".join(out) + "\n"


def measured_lines(run: dict) -> list[str]:
    """What was measured: each model name with the spec that stood in for it, and each dataset's item count."""
    out = ["## What was measured", ""]
    for alias, spec in (run.get("models") or {}).items():
        out.append(f"- model {alias}: `{spec}`" + (" (random-weight stand-in: accuracies at chance)"
                                                  if "random-tiny" in str(spec) else ""))
    if run.get("generator"):
        out.append(f"- description generator: `{run['generator']}`")
    for ds, n in (run.get("n_items") or {}).items():
        out.append(f"- dataset {ds}: {n} images / tasks evaluated")
    return out + [""]


def count_items(out: Path) -> dict[str, int]:
    """Items evaluated per dataset, read back from the run's result JSONs (the most any run of it evaluated)."""
    import json

    counts: dict[str, int] = {}
    for f in sorted(Path(out).rglob("*.json")):
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        v = doc.get("visroute") if isinstance(doc, dict) else None
        if not isinstance(v, dict) or "dataset" not in doc:
            continue
        n = v.get("n_evaluated", v.get("n_tasks"))
        if isinstance(n, int):
            counts[str(doc["dataset"])] = max(n, counts.get(str(doc["dataset"]), 0))
    return counts


def sweep_lines(cells: list[dict], methods: dict | None = None) -> list[str]:
    """One line per classname-free cell: accuracy at each class-name weight (methods named as in the tables)."""
    lines = []
    for c in cells:
        if c.get("w_cls"):
            pts = ", ".join(f"{r['w_cls']:g}: {100 * r['acc1']:.2f}" for r in c["w_cls"])
            label = (methods or {}).get(c["method"], {}).get("row", c["method"])
            lines.append(f"- {label} / {c['model']} / {c['dataset']}: {pts}")
    return lines


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
