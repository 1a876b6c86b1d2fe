"""Evaluating several contrastive models on several datasets with one head (``visroute eval -m ... -d ...``).

Each model is loaded once for all datasets (not at all when every run already exists and ``skip_existing`` is
set); one (model, dataset) failure is counted and reported, and the other runs still happen.
"""

from __future__ import annotations

from collections.abc import Sequence

from visroute.errors import VisrouteError


def evaluate_models(specs: Sequence, datasets: Sequence[str], run=None) -> tuple[list[dict], list[str]]:
    """Run ``visroute.eval.run.evaluate`` for every pipeline spec x dataset: (result documents, one message per
    failed run). ``run``: the ``RunOptions`` every run shares."""
    from visroute.eval.run import RunOptions, evaluate
    from visroute.models import load_model

    run = run or RunOptions()
    rows, errors = [], []
    for spec in specs:
        loaded = None
        for ds in datasets:
            try:
                if loaded is None and not run.skip_existing:
                    loaded = load_model(spec.model, device=spec.device, dtype=spec.dtype)
                rows.append(evaluate(spec, ds, run, model=loaded))
            except VisrouteError as e:
                errors.append(f"{spec.model} on {ds}: {e}")
    return rows, errors
