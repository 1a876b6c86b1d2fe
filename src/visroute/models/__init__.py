"""Model specs and the single factory, ``load_model(spec)``."""

from __future__ import annotations

from visroute.models.contrastive import ContrastiveModel, resolve_device, resolve_dtype
from visroute.models.spec import (BACKENDS, DEFAULT_MODEL, KNOWN_MODELS, Backend, ModelSpec, parse_model_spec,
                                  register_backend)
from visroute.errors import ModelLoadError


def load_model(spec: str | ModelSpec, device: str | None = "auto", dtype: str | None = "auto",
               image_backend: str | None = "pil") -> ContrastiveModel:
    """Load a contrastive image-text model from a spec string (see ``visroute.models.spec``).

    ``image_backend`` (transformers models only): "pil" (default), "torchvision", or None for
    transformers' automatic choice. Raises ModelLoadError (a VisrouteError) with a message saying what was tried and how to point
    at local weights when the model cannot be loaded.
    """
    parsed = parse_model_spec(spec)
    if parsed.kind == "generator":
        raise ModelLoadError(f"'{parsed.text}' is a generative model, not a contrastive image-text encoder; "
                             "it cannot be used for zero-shot classification (use it as a vlm/llm instead)")
    loader = BACKENDS[parsed.backend].load
    if loader is None:
        raise ModelLoadError(f"'{parsed.text}': the {parsed.backend} backend loads no contrastive image-text encoder")
    dev = resolve_device(device)
    return loader(parsed, dev, resolve_dtype(dtype, dev), image_backend)


__all__ = [
    "BACKENDS", "Backend", "ContrastiveModel", "DEFAULT_MODEL", "KNOWN_MODELS", "ModelSpec", "ModelLoadError",
    "load_model", "parse_model_spec", "register_backend",
]
