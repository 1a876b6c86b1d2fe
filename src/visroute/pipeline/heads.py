"""The head registry: every head a pipeline spec can name, each entry saying what it needs, its parameters
(defaults and checks), its family and how it is built. Nothing else in the house lists heads.

Adding a head is one module plus one call::

    register_head(HeadEntry("my-head", needs=("model",), classify=my_fit, summary="..."))

``classify(spec, model, classnames, selection, params)`` returns fitted classifiers (several for repeated
controls); ``answer(spec, generator, prices)`` builds the task pipeline of a head that answers with generators
(``generator(model_spec)`` gives a loaded one; contrastive heads answer tasks by scoring the options,
``ContrastivePipeline``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visroute.errors import VisrouteError
from visroute.registry import Registry

MODEL_FIELDS = ("model", "vlm", "llm")  # spec fields that hold model specs


class HeadSpecError(VisrouteError):
    """A head's parameters are wrong (the message names the key); pipeline.spec re-raises it as SpecError."""


@dataclass(frozen=True)
class Param:
    """One head parameter: its default and a check that returns the value in its canonical type."""

    default: Any
    check: Callable[[Any], Any] = lambda v: v
    help: str = ""

    def __call__(self, name: str, value: Any) -> Any:
        try:
            return self.check(value)
        except (TypeError, ValueError) as e:
            raise HeadSpecError(f"params '{name}': {e}") from None


def _int(low: int | None = None, optional: bool = False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).lstrip("-").isdigit():
            raise ValueError(f"expected an integer, got {v!r}")
        if low is not None and int(v) < low:
            raise ValueError(f"must be at least {low}, got {v!r}")
        return int(v)
    return check


def _float(v):
    import math

    if isinstance(v, bool) or not math.isfinite(float(v)):
        raise ValueError(f"expected a finite number, got {v!r}")
    return float(v)


def _floats(v):
    if not isinstance(v, (list, tuple)):
        raise ValueError(f"expected a list of numbers, got {v!r}")
    return [_float(x) for x in v]


def _choice(*values):
    def check(v):
        if v not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {v!r}")
        return v
    return check


def _optional_str(v):
    if v is not None and not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _style(v):
    from visroute.heads.descriptions import STYLES

    return _choice(*STYLES)(v)


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


STYLE = Param("dclip", _style, "dclip, photo or sentence")
#: generative heads: ask OpenAI-compatible endpoints for token log-probabilities (local models always report them)
LOGPROBS = Param(False, _bool, "ask endpoints for token log-probabilities: the answer's confidence for cascades")
REPEATS, SEED = Param(5, _int(1), "repetitions of a random control"), Param(0, _int(), "seed of the random control")
W_CLS = Param(0.0, _float, "class-name weight")
W_CLS_SWEEP = Param([], _floats, "w_cls values to sweep")


@dataclass(frozen=True)
class HeadEntry:
    """Everything about one head."""

    name: str
    needs: tuple[str, ...] = ("model",)        # spec fields that must be set (model / vlm / llm / descriptions)
    family: str = "contrastive"                # "contrastive" | "generative" (hierarchical routing groups by it)
    kind: str = "classify"                     # "classify": images against class names; "tasks": multiple choice
    params: dict[str, Param] = field(default_factory=dict)
    classify: Callable | None = None           # fitted classifiers against class names (contrastive heads)
    answer: Callable | None = None             # task pipeline builder (heads that answer with generators)
    templates: bool = False                    # reads ``spec.templates`` (prompt templates with {c})
    prompts: tuple[str, ...] = ()              # spec fields naming prompt templates (checked before loading)
    summary: str = ""

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(f for f in MODEL_FIELDS if f in self.needs)

    @property
    def selection(self) -> bool:
        """Needs a labelled selection split."""
        return "selection_dataset" in self.params

    def resolve(self, params: dict) -> dict:
        """Given params checked, with the defaults of those not given."""
        for k in params:
            if k not in self.params:
                from visroute.registry import nearest_key

                raise HeadSpecError(f"params key '{k}' does not apply to head '{self.name}'{nearest_key(k, self.params)}"
                                    f" (valid: {', '.join(self.params) or 'none'})")
        return {k: p(k, params[k]) if k in params else p.default for k, p in self.params.items()}


HEADS: Registry[HeadEntry] = Registry("head")


def register_head(entry: HeadEntry, replace: bool = False) -> HeadEntry:
    return HEADS.register(entry.name, entry, replace)


def classify_heads() -> tuple[str, ...]:
    """Heads that classify images against class names (eval, classify, the service)."""
    return HEADS.names(kind="classify")


def task_heads() -> tuple[str, ...]:
    """Heads evaluated as multiple-choice task pipelines (``eval --head``, grid task cells)."""
    return HEADS.names(kind="tasks")


# -- helpers for the built-in heads ---------------------------------------------------------------------
def spec_templates(spec) -> list[str]:
    from visroute.data.text import load_templates, validate_templates

    if isinstance(spec.templates, tuple):
        return validate_templates(list(spec.templates))
    return load_templates(spec.templates)


def load_spec_descriptions(spec, classnames: list[str], kind: str | None = None):
    from visroute.heads.description_sets import load_descriptions

    dset = load_descriptions(spec.descriptions, kind=kind)
    if spec.fallback_descriptions:
        dset = dset.with_fallback(load_descriptions(spec.fallback_descriptions, kind=kind))
    return dset.aligned_to(classnames)


def _zeroshot(spec, model, classnames, selection, p):
    from visroute.heads.zeroshot import ZeroShotClassifier

    return [ZeroShotClassifier(model, spec_templates(spec)).fit(classnames)]


def _descriptions(spec, model, classnames, selection, p):
    from visroute.heads.descriptions import DescriptionEnsembleClassifier

    dset = load_spec_descriptions(spec, classnames)
    return [DescriptionEnsembleClassifier(model, dset, style=p["description_style"]).fit(classnames)]


def _cupl(spec, model, classnames, selection, p):
    from visroute.heads.descriptions import DescriptionEnsembleClassifier

    dset = load_spec_descriptions(spec, classnames, kind="sentence")
    return [DescriptionEnsembleClassifier(model, dset, style="sentence", aggregate="embedding").fit(classnames)]


def _random(kind: str):
    def fit(spec, model, classnames, selection, p):
        from visroute.heads.descriptions import DescriptionEnsembleClassifier, random_descriptor_set

        dset = load_spec_descriptions(spec, classnames)
        return [DescriptionEnsembleClassifier(model, random_descriptor_set(dset, kind, seed=p["seed"] + r),
                                              style=p["description_style"]).fit(classnames)
                for r in range(p["repeats"])]
    return fit


def _classname_free(spec, model, classnames, selection, p):
    from visroute.heads.descriptions import ClassnameFreeClassifier

    dset = load_spec_descriptions(spec, classnames)
    return [ClassnameFreeClassifier(model, dset, w_cls=p["w_cls"]).fit(classnames)]


def _disclip(spec, model, classnames, selection, p):
    from visroute.heads.selection import DiscriminativeSelectionClassifier

    if selection is None:
        raise VisrouteError("head 'disclip' needs a selection dataset (a labelled split, e.g. a train folder)")
    dset = load_spec_descriptions(spec, classnames)
    X_sel, y_sel = selection
    try:
        head = DiscriminativeSelectionClassifier(model, dset, k=p["k"], m=p["m"], n_per_class=p["n_per_class"],
                                                 mode=p["mode"], w_cls=p["w_cls"])
        return [head.fit(classnames, X_sel, y_sel)]
    except ValueError as e:
        raise VisrouteError(str(e)) from None


def _vlm(spec, generator, prices):
    from visroute.heads.vlm import VLMDirectPipeline

    return VLMDirectPipeline(generator(spec.vlm), spec.prompt, prices, spec=spec)


def _vlm_llm(spec, generator, prices):
    from visroute.heads.vlm import VLMThenLLMPipeline

    return VLMThenLLMPipeline(generator(spec.vlm), generator(spec.llm), spec.describe_prompt, spec.reason_prompt,
                              prices, spec=spec)


DESC = ("model", "descriptions")
RANDOM = {"description_style": STYLE, "repeats": REPEATS, "seed": SEED}
for _entry in (
    HeadEntry("zeroshot", classify=_zeroshot, templates=True, summary="class names x prompt templates (CLIP)"),
    HeadEntry("descriptions", DESC, params={"description_style": STYLE}, classify=_descriptions,
              summary="class name + descriptions, mean of per-sentence scores (DCLIP; --description-style)"),
    HeadEntry("cupl", DESC, classify=_cupl, summary="description sentences as prompts, embeddings averaged (CuPL)"),
    HeadEntry("random-words", DESC, params=RANDOM, classify=_random("words"),
              summary="control: same number of random-word descriptors per class (WaffleCLIP), --repeats"),
    HeadEntry("random-chars", DESC, params=RANDOM, classify=_random("chars"),
              summary="control: random-character descriptors, --repeats"),
    HeadEntry("classname-free", DESC, params={"w_cls": W_CLS, "w_cls_sweep": W_CLS_SWEEP}, classify=_classname_free,
              summary="descriptions without the class name, + w_cls x class-name prompt; --w-cls-sweep"),
    HeadEntry("disclip", DESC, params={"w_cls": W_CLS, "w_cls_sweep": W_CLS_SWEEP, "k": Param(3, _int(1)),
                                       "m": Param(5, _int(1)), "n_per_class": Param(None, _int(1, optional=True)),
                                       "mode": Param("classname-free", _choice("classname-free", "classname-containing")),
                                       "selection_dataset": Param(None, _optional_str)},
              classify=_disclip, summary="discriminative selection per test image's top-k neighbourhood "
                                         "(needs --selection-dataset); --w-cls-sweep"),
    HeadEntry("clip-options", kind="tasks", classify=_zeroshot, templates=True, summary="a contrastive model scores each task's options"),
    HeadEntry("vlm", ("vlm",), "generative", "tasks", answer=_vlm, prompts=("prompt",), params={"logprobs": LOGPROBS},
              summary="a vision-language model answers the question"),
    HeadEntry("vlm+llm", ("vlm", "llm"), "generative", "tasks", answer=_vlm_llm, prompts=("describe_prompt", "reason_prompt"),
              params={"logprobs": LOGPROBS},
              summary="a VLM describes the image, an LLM reasons to the answer"),
):
    register_head(_entry)
