"""Routing one task end to end: choose with the router, then call the chosen model's pipeline."""

from __future__ import annotations

from visroute.errors import VisrouteError
from visroute.router.bundle import RouterBundle
from visroute.tasks.model import Task


def build_pipeline(config: dict):
    """A pipeline from a grid model entry ({name, head, model|vlm|llm, ...})."""
    from visroute.heads.vlm import CLIPOptionsPipeline, VLMDirectPipeline, VLMThenLLMPipeline
    from visroute.llm import ResponseCache, load_generator
    from visroute.models import load_model

    head = config.get("head")
    cache = ResponseCache()
    if head in ("zeroshot", "clip-options", "descriptions", "cupl", "classname-free"):
        return CLIPOptionsPipeline(load_model(config["model"]))
    if head == "vlm":
        return VLMDirectPipeline(load_generator(config["vlm"], cache=cache), config.get("prompt", "mcq"))
    if head == "vlm+llm":
        return VLMThenLLMPipeline(load_generator(config["vlm"], cache=cache), load_generator(config["llm"], cache=cache))
    raise VisrouteError(f"model entry {config.get('name')!r} has an unknown head {head!r}")


def route_task(bundle: RouterBundle, image: str, question: str, options: list[str], dataset: str = "user",
               lam: float | None = None, run: bool = True) -> dict:
    task = Task("query", image, question, options, None, "", dataset)
    picks, proba = bundle.decide([task.text], [image], lam)
    chosen = bundle.models[int(picks[0])]
    out = {"chosen": chosen, "lambda": bundle.lam if lam is None else lam,
           "predicted_accuracy": {m: float(p) for m, p in zip(bundle.models, proba[0])},
           "expected_cost": {m: float(c) for m, c in zip(bundle.models, bundle.costs)}}
    if not run:
        return out
    config = bundle.model_configs.get(chosen)
    if config is None:
        raise VisrouteError(f"the router does not know how to call '{chosen}': train it with --grid GRID.yaml")
    pred = build_pipeline(config).predict([task])[0]
    out.update(answer=options[pred.predicted] if pred.predicted is not None else None, raw_answer=pred.raw_answer,
               parse_rule=pred.parse_rule, latency_s=pred.latency_s, cost=pred.cost, error=pred.error)
    return out
