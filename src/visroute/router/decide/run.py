"""Routing one task end to end: choose with the router, then run the chosen model's measured pipeline.

The query becomes a ``Task`` whose router text comes from the same ``task_text`` as the training records, and
the chosen model is rebuilt from the exact pipeline spec its records carry, through ``build_pipeline``. A cascade
that stops when a model's prompt variants agree calls that model once per measured variant and keeps the vote's
answer (``visroute.router.decide.variants``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from visroute.errors import VisrouteError
from visroute.router.decide.bundle import RouterBundle
from visroute.router.decide.variants import model_variants, variant_vote
from visroute.tasks.model import Task


def make_query(question: str, options: list[str], image: str | Path | None = None, context: str = "") -> Task:
    """A user's task: text-only when ``image`` is None."""
    if not question or not question.strip():
        raise VisrouteError("the task needs a question or instruction")
    if len(options) == 1:
        raise VisrouteError("give at least two options (or none, to only choose a model for a free-form task)")
    if image is not None:
        p = Path(image)
        if not p.is_file():
            raise VisrouteError(f"image {image} does not exist or is not a regular file")
        image = str(p.resolve())
    return Task("query", image, question.strip(), list(options), None, context, "query", "vqa" if image else "text")


def route_task(bundle: RouterBundle, image: str | Path | None, question: str, options: list[str],
               lam: float | None = None, run: bool = True, variant: str | None = None, runtime=None) -> dict:
    """Choose a model for one task and (``run``) answer it with that model's measured pipeline."""
    task = make_query(question, options, image)
    d = bundle.choose(task.text, task.image, lam, runtime)
    out = {"chosen": d.chosen, "lambda": d.lam, "task_text": task.text, "predicted_accuracy": d.predicted_accuracy,
           "expected_cost": d.expected_cost, "strategy": bundle.strategy.get("kind", "router"), "plan": d.plan["calls"]}
    if not run:
        return out
    if len(options) < 2:
        raise VisrouteError("answering runs the chosen pipeline on a multiple-choice task: give at least two options "
                            "(or only choose, with run=False / --dry-run)")
    from visroute.pipeline.build import build_pipeline
    from visroute.router.decide.plan import run_plan

    specs, votes = {}, {}
    earlier = set(d.plan["calls"][:-1]) if d.plan.get("confidence") == "variants" else set()

    def answer(m: str, v: str | None):
        from visroute.llm.cancel import check

        check()  # a served request answered early (504, client gone) makes no further call
        spec = bundle.pipeline_spec(m, v)
        pred = build_pipeline(spec, runtime).predict([task])[0]
        if pred.error:
            raise VisrouteError(f"{m} failed to answer: {pred.error}")
        return spec, pred

    def call(j: int):
        m = bundle.models[j]
        variants = model_variants(bundle.pipelines, m) if m in earlier else []
        if not variants:
            specs[m], pred = answer(m, variant)
            return pred, own_confidence(pred)
        # a cascade stopping when its prompt variants agree: every variant is called and paid for
        answered = [answer(m, v) for v in variants]
        keys = [p.predicted for _, p in answered]
        i, share = variant_vote(keys)
        specs[m], kept = answered[i]
        votes[m] = {"variants": variants, "answers": keys, "kept": variants[i]}
        return replace(kept, call_cost=sum(p.call_cost or 0.0 for _, p in answered),
                       latency_s=sum(p.latency_s or 0.0 for _, p in answered)), share

    proba = [d.predicted_accuracy[m] for m in bundle.models]
    plan = {**d.plan, "calls": [bundle.models.index(m) for m in d.plan["calls"]]}
    res = run_plan(plan, proba, call)
    pred, answered = res["prediction"], bundle.models[res["model"]]
    out.update(chosen=answered, pipeline=specs[answered].to_dict(),
               answer=options[pred.predicted] if pred.predicted is not None else None,
               raw_answer=pred.raw_answer, parse_rule=pred.parse_rule, latency_s=sum(c["prediction"].latency_s or 0.0
                                                                                     for c in res["calls"]),
               cost=sum(c["prediction"].call_cost or 0.0 for c in res["calls"]), cached=pred.cached,
               calls=[{"model": bundle.models[c["model"]], "cost": c["prediction"].call_cost,
                       "confidence": c["confidence"], **votes.get(bundle.models[c["model"]], {})} for c in res["calls"]])
    return out


def own_confidence(pred) -> float | None:
    """The answering model's own confidence: its top option probability where the head reports one, else a
    generative answer's token probability where its backend reported log-probabilities (the records' ``score``)."""
    scores = getattr(pred, "option_scores", None)
    try:
        if scores is not None and len(scores):
            return float(max(scores))
    except (TypeError, ValueError):
        return None
    c = getattr(pred, "confidence", None)
    return float(c) if isinstance(c, float) and 0.0 <= c <= 1.0 else None
