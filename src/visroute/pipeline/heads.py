"""Contrastive heads from a pipeline spec: class names (+ descriptions, + a labelled selection split) ->
fitted estimators."""

from __future__ import annotations

from visroute.errors import VisrouteError
from visroute.pipeline.spec import PipelineSpec


def spec_templates(spec: PipelineSpec) -> list[str]:
    from visroute.data.text import load_templates, validate_templates

    if isinstance(spec.templates, tuple):
        return validate_templates(list(spec.templates))
    return load_templates(spec.templates)


def load_spec_descriptions(spec: PipelineSpec, classnames: list[str]):
    from visroute.descriptions import load_descriptions

    kind = "sentence" if spec.head == "cupl" else None
    dset = load_descriptions(spec.descriptions, kind=kind)
    if spec.fallback_descriptions:
        dset = dset.with_fallback(load_descriptions(spec.fallback_descriptions, kind=kind))
    return dset.aligned_to(classnames)


def make_heads(spec: PipelineSpec, model, classnames: list[str], selection: tuple | None = None) -> list:
    """Fitted head(s) for ``spec.head``: several for the random controls (one per repeat)."""
    from visroute.heads.descriptions import ClassnameFreeClassifier, DescriptionEnsembleClassifier, random_descriptor_set
    from visroute.heads.selection import DiscriminativeSelectionClassifier
    from visroute.heads.zeroshot import ZeroShotClassifier

    p = spec.params
    style = p.get("description_style", "dclip")
    if spec.head in ("zeroshot", "clip-options"):
        return [ZeroShotClassifier(model, spec_templates(spec)).fit(classnames)]
    if spec.head in ("vlm", "vlm+llm"):
        raise VisrouteError(f"head '{spec.head}' answers tasks; it does not classify against class names")
    dset = load_spec_descriptions(spec, classnames)
    if spec.head == "descriptions":
        return [DescriptionEnsembleClassifier(model, dset, style=style).fit(classnames)]
    if spec.head == "cupl":
        return [DescriptionEnsembleClassifier(model, dset, style="sentence", aggregate="embedding").fit(classnames)]
    if spec.head in ("random-words", "random-chars"):
        kind, seed = spec.head.split("-")[1], int(p.get("seed", 0))
        return [DescriptionEnsembleClassifier(model, random_descriptor_set(dset, kind, seed=seed + r), style=style)
                .fit(classnames) for r in range(int(p.get("repeats", 5)))]
    if spec.head == "classname-free":
        return [ClassnameFreeClassifier(model, dset, w_cls=float(p.get("w_cls", 0.0))).fit(classnames)]
    if selection is None:
        raise VisrouteError("head 'disclip' needs a selection dataset (a labelled split, e.g. a train folder)")
    X_sel, y_sel = selection
    try:
        head = DiscriminativeSelectionClassifier(model, dset, k=int(p.get("k", 3)), m=int(p.get("m", 5)),
                                                 n_per_class=p.get("n_per_class"), mode=p.get("mode", "classname-free"),
                                                 w_cls=float(p.get("w_cls", 0.0)))
        return [head.fit(classnames, X_sel, y_sel)]
    except ValueError as e:
        raise VisrouteError(str(e)) from None
