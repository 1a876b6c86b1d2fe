"""PipelineSpec: one small, serialisable description of "how to answer with model X".

The same spec is measured by ``grid run`` (and written into every record), carried by the router bundle,
and rebuilt by ``route`` / the service / Ray workers through ``build_pipeline``, so the pipeline that answers
at route time is exactly the one whose accuracy and cost the router learned.

JSON / YAML form (unknown keys are an error that names the key and the nearest valid one)::

    {"name": "llava+llama", "head": "vlm+llm", "vlm": "hf:/models/llava", "llm": "hf:/models/llama",
     "reason_prompt": "llm-reason", "max_tokens": 64, "prices": {"*": {"per_second": 0.00056}}, "device": "cpu"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visroute.errors import VisrouteError
from visroute.pipeline.heads import HEADS, HeadSpecError
from visroute.registry import nearest_key


class SpecError(VisrouteError):
    """A pipeline spec is malformed (the message names the key)."""


@dataclass(frozen=True)
class PipelineSpec:
    head: str = "zeroshot"
    name: str | None = None
    model: str | None = None                  # contrastive model spec (CLIP heads, clip-options)
    vlm: str | None = None                    # generative VLM spec (vlm, vlm+llm)
    llm: str | None = None                    # LLM spec (vlm+llm)
    templates: str | tuple[str, ...] | None = None   # file / FILE.json:KEY / inline list; None = shipped default
    descriptions: str | None = None
    fallback_descriptions: str | None = None
    prompt: str = "mcq"                       # vlm: the question prompt (shipped name or file)
    describe_prompt: str = "describe"         # vlm+llm: what the VLM is asked
    reason_prompt: str = "llm-reason"         # vlm+llm: what the LLM is asked
    max_tokens: int = 64
    temperature: float = 0.0
    prices: dict | None = None                # inline price table (see visroute.tasks.costs); None = shipped default
    device: str = "auto"
    dtype: str = "auto"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise SpecError(f"unknown head '{self.head}'{nearest_key(self.head, HEADS)} (heads: {', '.join(HEADS)})")
        entry = HEADS[self.head]
        missing = [k for k in entry.models if not getattr(self, k)]
        if missing:
            raise SpecError(f"head '{self.head}' needs {' and '.join(repr(k) for k in missing)}")
        for k in entry.needs:
            if not getattr(self, k):
                raise SpecError(f"head '{self.head}' needs '{k}'" + (" (a description file)" if k == "descriptions" else ""))
        if not isinstance(self.params, dict):
            raise SpecError("'params' must be a mapping")
        try:
            checked = entry.resolve(self.params)
        except HeadSpecError as e:
            raise SpecError(str(e)) from None
        object.__setattr__(self, "params", {k: checked[k] for k in self.params})
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise SpecError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if isinstance(self.templates, list):
            object.__setattr__(self, "templates", tuple(self.templates))

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any, where: str = "pipeline spec") -> "PipelineSpec":
        if not isinstance(raw, dict):
            raise SpecError(f"{where}: expected a mapping of keys to values, got {type(raw).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        for k in raw:
            if k not in valid:
                raise SpecError(f"{where}: unknown key '{k}'{nearest_key(str(k), valid)} (valid keys: {', '.join(valid)})")
        kw = dict(raw)
        for k in ("max_tokens",):
            if k in kw and isinstance(kw[k], str) and kw[k].isdigit():
                kw[k] = int(kw[k])
        for k in ("prices", "params"):
            if k in kw and kw[k] is not None and not isinstance(kw[k], dict):
                raise SpecError(f"{where}: '{k}' must be a mapping")
        kw["params"] = dict(kw.get("params") or {})
        try:
            return cls(**kw)
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "PipelineSpec":
        """Read a spec from a JSON or YAML file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"cannot read pipeline spec {path}: {e.strerror or e}") from None
        return cls.from_dict(_parse_text(text, path), str(path))

    @classmethod
    def from_json(cls, text: str, where: str = "pipeline spec") -> "PipelineSpec":
        from visroute.safe_load import SafeLoadError, parse_json

        try:
            return cls.from_dict(parse_json(text, where), where)
        except SafeLoadError as e:
            raise SpecError(str(e)) from None

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["templates"], tuple):
            d["templates"] = list(d["templates"])
        return d

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace; equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, **changes) -> "PipelineSpec":
        return dataclasses.replace(self, **changes)

    # -- what the spec names -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The routable name: ``name`` if given, else the model specs joined."""
        return self.name or " + ".join(self.model_specs)

    @property
    def entry(self):
        """The head's registry entry (``visroute.pipeline.heads.HEADS``)."""
        return HEADS[self.head]

    @property
    def model_specs(self) -> list[str]:
        return [s for s in (getattr(self, f) for f in self.entry.models) if s]

    @property
    def head_params(self) -> dict:
        """The head's parameters: those given, checked, and the defaults of the rest."""
        return self.entry.resolve(self.params)

    @property
    def prompt_variant(self) -> str:
        """The prompt the task records are labelled with; "*" for pipelines that do not read a question prompt
        variant (contrastive heads and vlm+llm, whose prompts are fixed in the spec)."""
        return self.prompt if "prompt" in self.entry.prompts else "*"


def _parse_text(text: str, path: Path) -> Any:
    from visroute.safe_load import SafeLoadError, parse_json, parse_yaml

    try:
        return (parse_json if path.suffix.lower() == ".json" else parse_yaml)(text, str(path))
    except SafeLoadError as e:
        raise SpecError(str(e)) from None
