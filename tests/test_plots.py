"""Plots people can read: each plot is rendered from a fixture, saved, and its artists are read back — no legend box
covers a data point or a bar (display coordinates), cost axes are logarithmic with a unit when costs span orders of
magnitude, and coinciding markers are fanned out so that each one stays visible."""

from __future__ import annotations

import numpy as np
import pytest

from visroute.eval.report import plot_results, results_figure
from visroute.router.evaluate.curves import plot_report, report_figure


def _data_boxes(fig):
    """Display-space boxes of every data mark: scatter markers, line vertices, bars."""
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    boxes = []
    for ax in fig.axes:
        for line in ax.lines:
            for x, y in line.get_transform().transform(line.get_xydata()):
                r = max(line.get_markersize(), 2) / 2
                boxes.append(Bbox.from_extents(x - r, y - r, x + r, y + r))
        for coll in ax.collections:
            if isinstance(coll, PathCollection):
                for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
                    boxes.append(Bbox.from_extents(x - 3, y - 3, x + 3, y + 3))
        for patch in ax.patches:
            if isinstance(patch, Rectangle) and patch.get_height() > 0:
                boxes.append(patch.get_window_extent())
    return boxes


def assert_no_legend_covers_data(fig):
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, "the plot has no legend"
    boxes = _data_boxes(fig)
    assert boxes
    for ax in fig.axes:   # every mark is inside the axes, where the reader looks for it
        inside = ax.get_window_extent(renderer).expanded(1.02, 1.02)
        out = [b for b in boxes if not inside.contains(*b.get_points().mean(axis=0))]
        assert not out, f"{len(out)} data mark(s) outside the axes, e.g. {out[0]}"
    for leg in legends:
        lb = leg.get_window_extent(renderer)
        hit = [b for b in boxes if lb.overlaps(b)]
        assert not hit, f"legend {lb} covers {len(hit)} data mark(s), e.g. {hit[0]}"


def _rows():
    def row(ds, model, acc, n=10):
        return {"dataset": ds, "model": model, "metrics": {"acc1": acc, "acc5": min(1.0, acc * 3)},
                "visroute": {"model_spec": model, "head": "zeroshot", "templates": "default",
                             "classnames": [f"c{i}" for i in range(n)]}}
    return [row("cifar10", "clip-b32", 1.0), row("cifar10", "siglip", 0.001), row("cifar10", "clip-l14", 0.97),
            row("pets", "clip-b32", 0.99, 37), row("pets", "siglip", 0.98, 37), row("pets", "clip-l14", 1.0, 37)]


def _report(costs, accs, sweep):
    names = [f"model-{i}" for i in range(len(costs))]
    singles = {n: {"cost": c, "accuracy": a} for n, c, a in zip(names, costs, accs)}
    return {"pareto": [{"cost": c, "accuracy": a} for c, a in sweep], "single_models": singles,
            "random": {"cost": float(np.mean(costs)), "accuracy": float(np.mean(accs))},
            "oracle": {"cost": min(costs), "accuracy": 1.0},
            "operating_point": {"cost": sweep[0][0], "accuracy": sweep[0][1],
                                "at_equal_share": {"knn": {"cost": sweep[0][0], "accuracy": sweep[0][1]},
                                                   "random": {"cost": costs[0], "accuracy": accs[0]},
                                                   "dataset_prior": {"cost": costs[-1], "accuracy": accs[-1]}}}}


def test_report_bars_legend_outside_values_and_chance(tmp_path):
    fig = results_figure(_rows())
    assert_no_legend_covers_data(fig)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert "0.001" in labels                                   # a tiny bar still shows its value
    assert ax.get_ylim()[1] > 1.0 and 1.0 in list(ax.get_yticks())   # the 1.0 tick is not hidden
    assert any(c.get_label() == "chance" for c in ax.collections)     # a chance line per dataset
    assert plot_results(_rows(), tmp_path / "acc1.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["spread", "coinciding", "one-point"])
def test_route_curve_is_readable(case, tmp_path):
    if case == "spread":        # costs over four orders of magnitude
        rep = _report([1e-5, 3e-4, 2e-2, 0.1], [0.4, 0.55, 0.7, 0.72], [(1e-5, 0.4), (1e-3, 0.6), (0.05, 0.72)])
    elif case == "coinciding":  # every policy at one spot (all tasks routed to one model)
        rep = _report([0.01, 0.01], [0.5, 0.5], [(0.01, 0.5), (0.01, 0.5)])
    else:                       # a lambda sweep with one point
        rep = _report([0.001, 0.5], [0.3, 0.8], [(0.2, 0.7)])
    fig = report_figure(rep)
    assert_no_legend_covers_data(fig)
    ax = fig.axes[0]
    assert "$ per task" in ax.get_xlabel()
    assert (ax.get_xscale() == "log") == (case != "coinciding")   # log where costs span more than 20x
    if case == "coinciding":    # no two markers drawn on the same display spot
        fig.canvas.draw()
        spots = [tuple(np.round(c.get_offset_transform().transform(c.get_offsets())[0], 1)) for c in ax.collections
                 if len(c.get_offsets())]
        assert len(spots) == len(set(spots)), spots
    if case == "one-point":
        assert ax.lines[0].get_markersize() >= 8
    assert plot_report(rep, tmp_path / "curve.png").stat().st_size > 0


def test_explain_html_uses_one_scale_across_classes():
    import re

    from visroute.descriptions.explain import render_html

    item = {"path": "x.jpg", "image": "data:,", "model": "m", "head": "descriptions",
            "classes": [{"class": "cat", "score": 0.9, "descriptions": [{"text": "whiskers", "similarity": 0.3,
                                                                          "contribution": 1.0}]},
                        {"class": "dog", "score": 0.1, "descriptions": [{"text": "a tail", "similarity": 0.2,
                                                                          "contribution": 0.1}]}]}
    widths = [int(w) for w in re.findall(r"class='bar' style='width:(\d+)px'", render_html([item]))]
    assert widths == [120, 12]     # the weaker class's bar is a tenth, not full length on a scale of its own
