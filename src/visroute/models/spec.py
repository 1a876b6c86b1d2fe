"""Model spec strings: one grammar names every model everywhere (Python, CLI, grids, result files).

Grammar::

    hf:<hub id or local directory>            transformers model: CLIP / SigLIP / SigLIP2 encoder,
                                              causal LM or vision-language model
    openclip:<arch>/<pretrained tag|path>     open_clip model (extra: visroute[openclip])
    openclip:local-dir:<directory>            open_clip directory (open_clip_config.json + weights)
    openclip:hf-hub:<hub id>                  open_clip model published on the hub
    openai-compatible:<base_url>#<model>      a model behind an OpenAI-compatible HTTP server
    openai:<model>                            the same, at the official endpoint (https://api.openai.com/v1)
    random-tiny[:clip|:siglip|:llama|:llava]  smoke test: tiny random-weight model, built locally
    <local directory>                         detected: config.json -> hf, open_clip_config.json -> openclip
    <alias>                                   a name from KNOWN_MODELS, e.g. clip-vit-b-32

Contrastive encoders (``load_model``) and generators (``visroute.llm.load_generator``) share it;
each loader refuses, with one line, a spec of the other kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from visroute.errors import ModelLoadError
from visroute.registry import Registry

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

#: Where ``openai:<model>`` points.
OPENAI_BASE_URL = "https://api.openai.com/v1"

#: random-tiny variant -> what it is ("contrastive" encoder or "generator")
RANDOM_TINY = {"clip": "contrastive", "siglip": "contrastive", "llama": "generator", "llava": "generator"}


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``text`` is the canonical string written to result files and cache keys.

    ``location``: hub id or directory (hf), architecture or ``local-dir:``/``hf-hub:`` path (openclip),
    variant (random-tiny) or base URL (openai-compatible). ``pretrained``: open_clip tag or checkpoint.
    ``model``: the model name sent to an OpenAI-compatible server.
    """

    backend: str
    location: str
    pretrained: str | None = None
    model: str | None = None

    @property
    def text(self) -> str:
        entry = BACKENDS.get(self.backend)
        return entry.text(self) if entry is not None and entry.text else f"{self.backend}:{self.location}"

    @property
    def kind(self) -> str:
        """"contrastive", "generator", or "any" (an hf model: its config decides at load time)."""
        entry = BACKENDS.get(self.backend)
        kind = entry.kind if entry is not None else "any"
        return kind(self) if callable(kind) else kind

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Backend:
    """Everything about one spec backend (``<name>:<rest>``): its grammar and its contrastive loader. Generator
    loaders are keyed by the same name in ``visroute.llm.client.GENERATORS``."""

    name: str
    form: str                                            # the accepted form(s), listed in every spec error
    kind: str | Callable[[ModelSpec], str] = "any"       # contrastive | generator | any
    parse: Callable[[str, str], ModelSpec] | None = None  # (rest, whole spec) -> ModelSpec; default (name, rest)
    text: Callable[[ModelSpec], str] | None = None       # canonical text; default "<name>:<location>"
    load: Callable | None = None                         # (parsed, device, dtype, image_backend) -> ContrastiveModel


BACKENDS: Registry[Backend] = Registry("model backend", error=ModelLoadError)


def register_backend(entry: Backend, replace: bool = False) -> Backend:
    return BACKENDS.register(entry.name, entry, replace)


def parse_model_spec(spec: str | ModelSpec) -> ModelSpec:
    """Parse a spec string (see module docstring) or raise ModelLoadError naming every accepted form."""
    if isinstance(spec, ModelSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("empty model spec; " + spec_forms())
    spec = spec.strip()
    spec = KNOWN_MODELS.get(spec, spec)
    if spec == "random-tiny":
        spec = "random-tiny:clip"
    backend, sep, rest = spec.partition(":")
    if sep and backend in BACKENDS:
        entry = BACKENDS[backend]
        if not rest and backend != "openai":
            raise ModelLoadError(f"model spec '{spec}' names no model after '{backend}:'; " + spec_forms())
        return entry.parse(rest, spec) if entry.parse else ModelSpec(backend, rest)
    return _parse_local(spec)


def _parse_random_tiny(rest: str, spec: str) -> ModelSpec:
    if rest not in RANDOM_TINY:
        raise ModelLoadError(f"unknown random-tiny variant '{rest}' in '{spec}'; " + spec_forms())
    return ModelSpec("random-tiny", rest)


def _parse_openai_compatible(rest: str, spec: str) -> ModelSpec:
    url, _, model = rest.partition("#")
    return _parse_remote(url, model, spec)


def _parse_openclip(rest: str, spec: str = "") -> ModelSpec:
    if rest.startswith(("local-dir:", "hf-hub:")):
        return ModelSpec("openclip", rest)
    arch, _, pretrained = rest.partition("/")
    return ModelSpec("openclip", arch, pretrained or None)


def _parse_remote(url: str, model: str, spec: str) -> ModelSpec:
    if not url or not model.strip():
        raise ModelLoadError(f"model spec '{spec}' names no server model (e.g. "
                             "openai-compatible:http://127.0.0.1:8000/v1#my-model or openai:gpt-4o-mini); " + spec_forms())
    return ModelSpec("openai-compatible", url, model=model.strip())


def _parse_local(spec: str) -> ModelSpec:
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return ModelSpec("openclip", f"local-dir:{path}")
        if (path / "config.json").is_file():
            return ModelSpec("hf", str(path))
        raise ModelLoadError(f"directory '{path}' holds neither a transformers model (config.json) "
                             "nor an open_clip model (open_clip_config.json); " + spec_forms())
    hint = ""
    if "/" in spec and not spec.startswith(("/", ".", "~")):
        hint = f" (no directory of that name here; for a hub id write hf:{spec})"
    raise ModelLoadError(f"unrecognised model spec '{spec}'{hint}; " + spec_forms())


def spec_forms() -> str:
    """The one list of accepted forms, appended to every spec error."""
    return ("use " + ", ".join(e.form for _, e in BACKENDS.items()) + ", a local model directory, or an alias: "
            + ", ".join(sorted(KNOWN_MODELS)))


# -- the built-in backends: grammar and contrastive loaders (generator loaders: visroute.llm.client) ----------
def _load_hf(parsed: ModelSpec, device, dtype, image_backend):
    from visroute.models.hf import load_hf_contrastive

    return load_hf_contrastive(parsed.location, parsed.text, device, dtype, image_backend=image_backend)


def _load_random_tiny(parsed: ModelSpec, device, dtype, image_backend):
    from visroute.models.hf import load_hf_contrastive
    from visroute.models.tiny import ensure_random_tiny

    return load_hf_contrastive(str(ensure_random_tiny(parsed.location)), parsed.text, device, dtype, is_random=True,
                               image_backend=image_backend)


def _load_openclip(parsed: ModelSpec, device, dtype, image_backend):
    from visroute.models.openclip import load_openclip

    model = load_openclip(parsed.location, parsed.pretrained, parsed.text, device, dtype)
    model.is_random = parsed.pretrained is None and not parsed.location.startswith(("local-dir:", "hf-hub:"))
    return model


def _openclip_text(s: ModelSpec) -> str:
    return f"openclip:{s.location}/{s.pretrained}" if s.pretrained else f"openclip:{s.location}"


for _entry in (
    Backend("hf", "hf:<hub id or directory>", load=_load_hf),
    Backend("openclip", "openclip:<arch>/<pretrained tag or checkpoint>, openclip:local-dir:<directory>, "
            "openclip:hf-hub:<hub id>", "contrastive", _parse_openclip, _openclip_text, _load_openclip),
    Backend("openai-compatible", "openai-compatible:<base_url>#<model>", "generator", _parse_openai_compatible,
            lambda s: f"openai-compatible:{s.location}#{s.model}"),
    Backend("openai", "openai:<model>", "generator", lambda rest, spec: _parse_remote(OPENAI_BASE_URL, rest, spec)),
    Backend("random-tiny", "random-tiny[:" + "|:".join(RANDOM_TINY) + "]", lambda s: RANDOM_TINY[s.location],
            _parse_random_tiny, load=_load_random_tiny),
):
    register_backend(_entry)
