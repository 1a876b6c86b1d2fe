"""Model specs and the single factory, ``load_model(spec)``."""

from __future__ import annotations

from visroute.models.contrastive import ContrastiveModel, resolve_device, resolve_dtype
from visroute.models.spec import DEFAULT_MODEL, KNOWN_MODELS, ModelSpec, parse_model_spec
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
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if parsed.backend == "hf":
        from visroute.models.hf import load_hf_contrastive

        return load_hf_contrastive(parsed.location, parsed.text, dev, dt, image_backend=image_backend)
    if parsed.backend == "random-tiny":
        from visroute.models.hf import load_hf_contrastive
        from visroute.models.tiny import ensure_random_tiny

        return load_hf_contrastive(str(ensure_random_tiny(parsed.location)), parsed.text, dev, dt, is_random=True,
                                   image_backend=image_backend)
    from visroute.models.openclip import load_openclip

    model = load_openclip(parsed.location, parsed.pretrained, parsed.text, dev, dt)
    model.is_random = parsed.pretrained is None and not parsed.location.startswith(("local-dir:", "hf-hub:"))
    return model


__all__ = [
    "ContrastiveModel", "DEFAULT_MODEL", "KNOWN_MODELS", "ModelSpec", "ModelLoadError",
    "load_model", "parse_model_spec",
]
