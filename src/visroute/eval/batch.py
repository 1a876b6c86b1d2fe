"""Evaluating several contrastive models on several datasets with one head (``visroute eval -m ... -d ...``).

Each model is loaded once for all datasets (not at all when every run already exists and ``skip_existing`` is
set); one (model, dataset) failure is counted and reported, and the other runs still happen.
"""

from __future__ import annotations

from collections.abc import Sequence

from visroute.errors import VisrouteError


def evaluate_models(models: Sequence[str], datasets: Sequence[str], opts, cache=None) -> tuple[list[dict], list[str]]:
    """Run ``visroute.eval.run.evaluate`` for every model x dataset: (result documents, one message per failed run).

    ``opts`` is an ``EvalOptions``; ``cache`` a feature cache (an engine's, e.g. Ray's; default: the local one).
    """
    from visroute.eval.run import evaluate
    from visroute.models import load_model

    if not models:
        raise VisrouteError(f"head '{opts.head}' needs --model")
    rows, errors = [], []
    for spec in models:
        loaded = None
        for ds in datasets:
            try:
                if loaded is None and not opts.skip_existing:
                    loaded = load_model(spec, device=opts.device, dtype=opts.dtype)
                rows.append(evaluate(loaded or spec, ds, opts, cache=cache))
            except VisrouteError as e:
                errors.append(f"{spec} on {ds}: {e}")
    return rows, errors
