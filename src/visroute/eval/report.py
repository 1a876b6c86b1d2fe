"""Reading result files back: text tables (what ``visroute eval`` and ``visroute report`` print) and comparison plots."""

from __future__ import annotations

from pathlib import Path

from visroute.errors import VisrouteError


def plot_results(rows: list[dict], path: Path, metric: str = "acc1") -> Path:
    """Grouped bar chart: one group per dataset, one bar per (model, head, templates); saved as PNG."""
    from visroute.io import save_figure

    return save_figure(results_figure(rows, metric), path)


def results_figure(rows: list[dict], metric: str = "acc1"):
    """The figure ``plot_results`` saves. Readable by construction: the legend sits outside the axes, every bar
    carries its value (so a 0.001 bar still shows), and a dashed line per dataset marks chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if metric not in ("acc1", "acc5", "mean_per_class_recall"):
        raise VisrouteError(f"unknown metric '{metric}' (acc1, acc5, mean_per_class_recall)")
    datasets = sorted({r["dataset"] for r in rows})
    series = sorted({_series(r) for r in rows})
    values = np.full((len(series), len(datasets)), np.nan)
    chance = np.full(len(datasets), np.nan)
    for r in rows:
        j = datasets.index(r["dataset"])
        values[series.index(_series(r)), j] = r["metrics"].get(metric) or np.nan
        c = _chance(r, metric)
        if c is not None:
            chance[j] = c
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(datasets) * max(1, len(series)) ** 0.5), 4.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(datasets))
    for k, name in enumerate(series):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values[k], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=6, padding=1, rotation=90 if len(series) > 3 else 0)
    for j, c in enumerate(chance):
        if np.isfinite(c):
            ax.hlines(c, j - 0.45, j + 0.45, colors="k", linestyles="--", linewidth=1,
                      label="chance" if j == int(np.nanargmax(np.isfinite(chance))) else None)
    ax.set_xticks(x, datasets, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.08)          # room above 1.0 for the value labels; the 1.0 tick stays visible
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, title="model | head | prompts",
              title_fontsize=7)
    ax.set_title(f"visroute: {metric} per dataset")
    fig.tight_layout()
    return fig


def _chance(r: dict, metric: str) -> float | None:
    """Accuracy of guessing: 1/classes (k/classes for top-k), or the task runs' own mean chance."""
    v = r.get("visroute", {})
    if r.get("metrics", {}).get("chance_acc1") is not None:          # task runs: the mean of 1 / options
        return float(r["metrics"]["chance_acc1"]) if metric == "acc1" else None
    n = len(v.get("classnames") or v.get("per_class_accuracy") or []) or None
    if n is None:
        return None
    return min(1.0, (5 if metric == "acc5" else 1) / n)


def _series(r: dict) -> str:
    v = r.get("visroute", {})
    return f"{v.get('model_spec', r['model'])} | {v.get('head', '')} | {v.get('templates', '')}"


TASK_KIND = "multiple_choice"


def summary_table(rows: list[dict]) -> str:
    """One line per classification result: dataset, model, head, prompts, acc1/acc5/mpcr, counts, speed."""
    head = ["dataset", "model", "head", "prompts", "acc1", "acc5", "mpcr", "n", "skipped", "img/s", "note"]
    lines = []
    for d in rows:
        v = d.get("visroute", {})
        m = d["metrics"]
        note = ("random weights" if v.get("random_weights") else "") + (" (existing)" if d.get("_skipped_existing") else "")
        prompts = v.get("templates") if v.get("head", "zeroshot") == "zeroshot" else Path(str(v.get("descriptions"))).name
        lines.append([d["dataset"], v.get("model_spec", d["model"]), v.get("head", ""), str(prompts),
                      _num(m.get("acc1")), _num(m.get("acc5")), _num(m.get("mean_per_class_recall")),
                      str(v.get("n_evaluated", "")), str(v.get("n_skipped", "")),
                      f"{v['images_per_s']:.1f}" if v.get("images_per_s") else "", note.strip()])
    return _table(head, lines)


def task_table(rows: list[dict]) -> str:
    """One line per task-pipeline result: accuracy against chance, parse failures, errors, cost and latency."""
    head = ["dataset", "pipeline", "models", "acc1", "chance", "unparsable", "errors", "cost", "cost/task", "latency", "cached"]
    lines = []
    for d in rows:
        v = d["visroute"]
        lines.append([d["dataset"], v["head"], d["model"], f"{d['metrics']['acc1']:.3f}", f"{d['metrics']['chance_acc1']:.3f}",
                      str(v["n_unparsable"]), str(v["n_errors"]), f"{v['cost_total']:.6f}", f"{(v['cost_per_task'] or 0):.2e}",
                      f"{(v['latency_mean_s'] or 0):.3f}s", str(v["n_cached"])])
    return _table(head, lines)


def report_directory(directory: Path, plot: Path | None = None, metric: str = "acc1") -> str:
    """The tables for every result file under ``directory``; with ``plot``, also a PNG of the classification runs."""
    from visroute.eval.results import read_results

    rows = read_results(directory)
    if not rows:
        raise VisrouteError(f"no visroute result files under {directory}")
    tasks = [r for r in rows if r.get("task") == TASK_KIND]
    images = [r for r in rows if r.get("task") != TASK_KIND]
    if plot is not None:
        if not images:
            raise VisrouteError(f"no classification results under {directory} to plot")
        plot_results(images, plot, metric)
    return "\n\n".join(t for t in (summary_table(images) if images else "", task_table(tasks) if tasks else "") if t)


def _num(x) -> str:
    return "" if x is None else f"{x:.4f}"


def _table(head: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])
