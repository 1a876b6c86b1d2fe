"""Model spec strings: one string names a model everywhere (Python, CLI, result files).

Grammar::

    hf:<hub id or local directory>          transformers CLIP / SigLIP / SigLIP2
    openclip:<arch>/<pretrained tag|path>   open_clip model (extra: visroute[openclip])
    openclip:local-dir:<directory>          open_clip directory (open_clip_config.json + weights)
    openclip:hf-hub:<hub id>                open_clip model published on the hub
    random-tiny[:clip|:siglip]              smoke test: tiny randomly initialised model, built locally
    <local directory>                       detected: config.json -> hf, open_clip_config.json -> openclip
    <alias>                                 a name from KNOWN_MODELS, e.g. clip-vit-b-32
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from visroute.errors import ModelLoadError

#: Named specs a user can type instead of the full string (``visroute models`` lists them).
KNOWN_MODELS: dict[str, str] = {
    "clip-vit-b-32": "hf:openai/clip-vit-base-patch32",
    "clip-vit-b-16": "hf:openai/clip-vit-base-patch16",
    "clip-vit-l-14": "hf:openai/clip-vit-large-patch14",
    "clip-vit-l-14-336": "hf:openai/clip-vit-large-patch14-336",
    "siglip-base-224": "hf:google/siglip-base-patch16-224",
    "siglip-so400m-384": "hf:google/siglip-so400m-patch14-384",
    "siglip2-base-224": "hf:google/siglip2-base-patch16-224",
    "siglip2-so400m-384": "hf:google/siglip2-so400m-patch14-384",
    "openclip-vit-b-32-laion2b": "openclip:ViT-B-32/laion2b_s34b_b79k",
    "openclip-vit-b-32-openai": "openclip:ViT-B-32/openai",
    "openclip-vit-h-14-laion2b": "openclip:ViT-H-14/laion2b_s32b_b79k",
    "random-tiny": "random-tiny:clip",
    "random-tiny-siglip": "random-tiny:siglip",
}

#: The model `visroute classify` uses when none is given.
DEFAULT_MODEL = "hf:openai/clip-vit-base-patch32"

BACKENDS = ("hf", "openclip", "random-tiny", "openai-compatible")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``text`` is the canonical string written to result files."""

    backend: str
    location: str
    pretrained: str | None = None

    @property
    def text(self) -> str:
        if self.backend == "openclip" and self.pretrained:
            return f"openclip:{self.location}/{self.pretrained}"
        return f"{self.backend}:{self.location}"

    def __str__(self) -> str:
        return self.text


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a spec string (see module docstring) or raise ModelLoadError naming the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("empty model spec; " + _forms())
    spec = spec.strip()
    if spec in KNOWN_MODELS:
        spec = KNOWN_MODELS[spec]
    if spec == "random-tiny":
        spec = "random-tiny:clip"
    backend, sep, rest = spec.partition(":")
    if sep and backend in BACKENDS:
        if not rest:
            raise ModelLoadError(f"model spec '{spec}' names no model after '{backend}:'; " + _forms())
        if backend == "openclip":
            return _parse_openclip(rest, spec)
        if backend == "random-tiny":
            if rest not in ("clip", "siglip"):
                raise ModelLoadError(f"unknown random-tiny variant '{rest}' (use random-tiny:clip or random-tiny:siglip)")
            return ModelSpec("random-tiny", rest)
        return ModelSpec(backend, rest)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return ModelSpec("openclip", f"local-dir:{path}")
        if (path / "config.json").is_file():
            return ModelSpec("hf", str(path))
        raise ModelLoadError(
            f"directory '{path}' holds neither a transformers model (config.json) "
            "nor an open_clip model (open_clip_config.json)"
        )
    raise ModelLoadError(f"unrecognised model spec '{spec}'; " + _forms())


def _parse_openclip(rest: str, spec: str) -> ModelSpec:
    if rest.startswith(("local-dir:", "hf-hub:")):
        return ModelSpec("openclip", rest)
    arch, _, pretrained = rest.partition("/")
    return ModelSpec("openclip", arch, pretrained or None)


def _forms() -> str:
    return (
        "use hf:<hub id or directory>, openclip:<arch>/<pretrained tag or checkpoint>, "
        "openclip:local-dir:<directory>, random-tiny, a local model directory, or one of: "
        + ", ".join(sorted(KNOWN_MODELS))
    )
