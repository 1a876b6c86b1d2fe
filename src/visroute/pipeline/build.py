"""``build_pipeline(spec)``: the one factory behind classify, eval, grid, describe, route (and serve / Ray).

A built pipeline answers multiple-choice tasks (``predict(tasks) -> list[TaskPrediction]``, each with its
prediction, scores, cost, latency and error) and, for contrastive specs, also gives the fitted image
classifier for a list of class names (``classifiers(classnames)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from visroute.errors import VisrouteError
from visroute.pipeline.heads import spec_templates
from visroute.pipeline.spec import PipelineSpec


@dataclass
class Runtime:
    """How to reach and run models, kept out of the spec: transport limits and shared caches.

    ``models`` memoises loaded models by (spec, device, dtype) so a grid loads each model once.
    ``trusted_endpoints``: endpoint URLs the user typed on the command line; any other URL must be named by the
    user's endpoint configuration (``visroute.llm.endpoints``), never only by a grid or a router bundle.
    """

    trusted_endpoints: tuple[str, ...] = ()
    timeout: float = 120.0
    retries: int = 4
    concurrency: int = 4
    response_cache: Any = None
    models: dict = field(default_factory=dict)

    def cache(self):
        if self.response_cache is None:
            from visroute.llm import ResponseCache

            self.response_cache = ResponseCache()
        return self.response_cache


def typed_endpoints(*model_specs: str | None) -> tuple[str, ...]:
    """The endpoint URLs inside model specs the user typed on the command line (trusted: see ``Runtime``)."""
    from visroute.models.spec import parse_model_spec

    out = []
    for s in model_specs:
        if s:
            p = parse_model_spec(s)
            if p.backend == "openai-compatible" and not p.location.startswith("@"):
                out.append(p.location)
    return tuple(out)


def price_table(spec: PipelineSpec):
    from visroute.tasks.costs import PriceTable

    return PriceTable(spec.prices) if spec.prices is not None else PriceTable()


def load_contrastive(spec: PipelineSpec, runtime: Runtime | None = None):
    runtime = runtime or Runtime()
    key = ("clip", spec.model, spec.device, spec.dtype)
    if key not in runtime.models:
        from visroute.models import load_model

        runtime.models[key] = load_model(spec.model, device=spec.device, dtype=spec.dtype)
    return runtime.models[key]


def load_generative(model_spec: str, spec: PipelineSpec, runtime: Runtime):
    logprobs = bool(spec.params.get("logprobs", False))
    key = ("gen", model_spec, spec.max_tokens, spec.temperature, spec.device, logprobs)
    if key not in runtime.models:
        from visroute.llm import load_generator

        runtime.models[key] = load_generator(model_spec, cache=runtime.cache(), max_tokens=spec.max_tokens,
                                             temperature=spec.temperature, device=spec.device, logprobs=logprobs,
                                             timeout=runtime.timeout,
                                             max_retries=runtime.retries, concurrency=runtime.concurrency,
                                             trusted_endpoints=runtime.trusted_endpoints)
    return runtime.models[key]


def build_pipeline(spec: PipelineSpec | dict, runtime: Runtime | None = None, model: Any = None):
    """The pipeline a spec describes. ``model``: an already loaded contrastive model to use instead of loading."""
    spec = spec if isinstance(spec, PipelineSpec) else PipelineSpec.from_dict(spec)
    runtime = runtime or Runtime()
    prices = price_table(spec)
    if spec.entry.answer is not None:
        return spec.entry.answer(spec, lambda model_spec: load_generative(model_spec, spec, runtime), prices)
    return ContrastivePipeline(spec, model if model is not None else load_contrastive(spec, runtime), prices)


def _clip_options_class():
    from visroute.heads.vlm import CLIPOptionsPipeline

    return CLIPOptionsPipeline


class ContrastivePipeline:
    """A contrastive model with a head: classifies images against class names, and answers tasks by scoring
    each task's options (``clip-options``) with the spec's templates."""

    name = "clip-options"

    def __init__(self, spec: PipelineSpec, model, prices):
        self.spec, self.model, self.prices = spec, model, prices
        templates = spec_templates(spec) if spec.entry.templates and spec.templates else ["a photo of a {c}."]
        self._options = _clip_options_class()(model, templates, prices=prices, decode=spec.decode)
        self._options.spec = spec

    @property
    def models(self) -> list[str]:
        return [self.model.spec]

    def predict(self, tasks, progress=None):
        return self._options.predict(tasks, progress)

    def image_cost(self, seconds_per_image: float) -> float:
        """What classifying one image costs under the spec's prices (per-image price + measured seconds)."""
        return self.prices.price(self.model.spec).cost(0, 0, 1, seconds_per_image)

    def classifiers(self, classnames: list[str], selection: tuple | None = None) -> list:
        """Fitted head(s) for the spec: several for the random controls (one per repeat)."""
        entry = self.spec.entry
        if entry.classify is None:
            raise VisrouteError(f"head '{self.spec.head}' answers tasks; it does not classify against class names")
        return entry.classify(self.spec, self.model, list(classnames), selection, self.spec.head_params)

    def classifier(self, classnames: list[str], selection: tuple | None = None):
        return self.classifiers(classnames, selection)[0]


def check_buildable(spec: PipelineSpec) -> None:
    """Cheap checks before any model is loaded: model specs parse, prompts exist."""
    from visroute.models.spec import parse_model_spec
    from visroute.tasks.prompts import load_prompt

    for s in spec.model_specs:
        parse_model_spec(s)
    for field_name in spec.entry.prompts:
        load_prompt(getattr(spec, field_name))
    if spec.entry.family == "contrastive" and spec.templates is not None and not isinstance(spec.templates, tuple):
        spec_templates(spec)


__all__ = ["ContrastivePipeline", "Runtime", "VisrouteError", "build_pipeline", "check_buildable", "price_table"]
