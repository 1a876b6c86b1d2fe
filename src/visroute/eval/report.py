"""Comparison plots across result files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from visroute.errors import VisrouteError


def plot_results(rows: list[dict], path: Path, metric: str = "acc1") -> Path:
    """Grouped bar chart: one group per dataset, one bar per (model, head, templates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if metric not in ("acc1", "acc5", "mean_per_class_recall"):
        raise VisrouteError(f"unknown metric '{metric}' (acc1, acc5, mean_per_class_recall)")
    datasets = sorted({r["dataset"] for r in rows})
    series = sorted({_series(r) for r in rows})
    values = np.full((len(series), len(datasets)), np.nan)
    for r in rows:
        values[series.index(_series(r)), datasets.index(r["dataset"])] = r["metrics"].get(metric) or np.nan
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(datasets) * max(1, len(series)) ** 0.5), 4.5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(datasets))
    for k, name in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values[k], width, label=name)
    ax.set_xticks(x, datasets, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"visroute: {metric} per dataset")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series(r: dict) -> str:
    v = r.get("visroute", {})
    return f"{v.get('model_spec', r['model'])} | {v.get('head', '')} | {v.get('templates', '')}"
