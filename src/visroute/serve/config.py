"""``serve.yaml``: what ``visroute serve`` loads, read strictly (an unknown key is an error naming the nearest one).

The file names models, label sets, routers and endpoints; it never carries secrets and never decides where a
secret is sent. An endpoint is a URL or ``@name`` (an entry of the user's own endpoints file, see
``visroute.llm.endpoints``); its key, if any, comes only from that file's ``api_key_env`` for that URL (or
``OPENAI_API_KEY`` for https://api.openai.com), never from this file. The service's own API keys come from the
environment or a file given on the command line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from visroute.errors import VisrouteError
from visroute.pipeline.heads import HEADS, classify_heads
from visroute.pipeline.spec import nearest_key

#: the model and label set served when no config is given (the README's first minute)
DEFAULT_MODEL_NAME = "random-tiny"
SHIPPED_IMAGENET = Path(__file__).with_name("imagenet1k.txt")
SERVE_KEYS_ENV = "VISROUTE_SERVE_API_KEYS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]{0,127}$")


class ServeConfigError(VisrouteError):
    """The service's config (or its key set-up) is unusable; the message names the key."""


@dataclass(frozen=True)
class ModelEntry:
    """A contrastive model served for classification (a zero-shot pipeline spec plus the name clients use)."""

    name: str
    model: str
    templates: Any = None
    device: str = "auto"
    dtype: str = "auto"
    decode: str = "exact"       # exact (the model's own preprocessing) | fast | gpu, as on the CLI


@dataclass(frozen=True)
class LabelSetEntry:
    """Class names bound to a served model and a contrastive head; built once at start-up."""

    name: str
    labels: Any
    model: str = ""
    head: str = "zeroshot"
    templates: Any = None
    descriptions: str | None = None
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RouterEntry:
    name: str
    path: str
    lam: float | None = None


@dataclass(frozen=True)
class EndpointEntry:
    """An OpenAI-compatible server a routed (or directly named) model lives at: a URL, or ``@name`` of the user's
    endpoints file (whose entry may bind a key)."""

    name: str
    base_url: str
    model: str


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    decode_workers: int = 0             # 0: threads two per core (4-16), processes one per core (up to 8)
    decode_processes: bool = False      # decode in worker processes instead of threads (measured slower here)


@dataclass(frozen=True)
class Limits:
    max_body_mb: float = 20.0
    max_pixels: int = 40_000_000
    request_timeout_s: float = 30.0
    upstream_timeout_s: float = 120.0
    max_labels: int = 2000
    max_templates: int = 64
    max_top_k: int = 100
    #: seconds an idle keep-alive connection is held open (uvicorn's ``timeout_keep_alive``)
    keep_alive_s: float = 5.0
    #: largest request head (request line + headers) in bytes (uvicorn's ``h11_max_incomplete_event_size``)
    max_header_bytes: int = 16384


@dataclass(frozen=True)
class ServeConfig:
    models: tuple[ModelEntry, ...]
    label_sets: tuple[LabelSetEntry, ...] = ()
    routers: tuple[RouterEntry, ...] = ()
    endpoints: tuple[EndpointEntry, ...] = ()
    allow_image_urls: tuple[str, ...] = ()
    batching: Batching = Batching()
    limits: Limits = Limits()
    source: str = "(built-in default)"

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)


def _check_keys(raw: Any, cls: type, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ServeConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    valid = [f.name for f in fields(cls) if f.name != "source"]
    if cls is RouterEntry:
        valid = [v if v != "lam" else "lambda" for v in valid]
    for k in raw:
        if k not in valid:
            raise ServeConfigError(f"{where}: unknown key '{k}'{nearest_key(str(k), valid)} "
                                   f"(valid: {', '.join(valid)})")
    return dict(raw)


def _number(value: Any, where: str, minimum: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or \
            (integer and int(value) != value):
        kind = "a whole number" if integer else "a number"
        raise ServeConfigError(f"{where} must be {kind} >= {minimum:g}, got {value!r}")
    return int(value) if integer else float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ServeConfigError(f"{where}: 'name' must be letters, digits and ._:/+- (at most 128), got {value!r}")
    return value


def _resolve(value: Any, base: Path) -> Any:
    """A relative file reference (``FILE`` or ``FILE.json:KEY``) made absolute against the config's folder."""
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return value
    head, sep, key = value.rpartition(":")
    if (base / value).exists():
        return str((base / value).resolve())
    if sep and head and (base / head).exists():
        return f"{(base / head).resolve()}:{key}"
    return value


def _entries(raw: Any, cls: type, where: str, base: Path) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ServeConfigError(f"{where}: expected a list of entries")
    out, seen = [], set()
    for i, item in enumerate(raw):
        d = _check_keys(item, cls, f"{where}[{i}]")
        if "name" not in d:
            raise ServeConfigError(f"{where}[{i}]: missing 'name'")
        d["name"] = _name(d["name"], f"{where}[{i}]")
        if d["name"] in seen:
            raise ServeConfigError(f"{where}: the name '{d['name']}' is used twice")
        seen.add(d["name"])
        for k in ("templates", "descriptions", "labels", "path"):
            if k in d:
                d[k] = _resolve(d[k], base)
        if "lambda" in d:
            d["lam"] = _number(d.pop("lambda"), f"{where}[{i}].lambda", 0.0)
        try:
            out.append(cls(**d))
        except TypeError as e:
            raise ServeConfigError(f"{where}[{i}]: {e}") from None
    return tuple(out)


def _check_endpoint(e: EndpointEntry, where: str) -> None:
    if isinstance(e.base_url, str) and e.base_url.startswith("@") and len(e.base_url) > 1:
        pass
    else:
        parts = urlsplit(e.base_url) if isinstance(e.base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServeConfigError(f"{where}: base_url must be an http(s) URL or @name (an entry of your endpoints "
                                   f"file), got {e.base_url!r}")
    if not isinstance(e.model, str) or not e.model:
        raise ServeConfigError(f"{where}: 'model' must name the model the endpoint serves")


def _check(cfg: ServeConfig) -> ServeConfig:
    if not cfg.models:
        raise ServeConfigError(f"{cfg.source}: 'models' must list at least one contrastive model")
    names = {m.name for m in cfg.models}
    for i, m in enumerate(cfg.models):
        if not isinstance(m.model, str) or not m.model:
            raise ServeConfigError(f"{cfg.source}: models[{i}] needs 'model' (a contrastive model spec)")
    for i, s in enumerate(cfg.label_sets):
        if s.model and s.model not in names:
            raise ServeConfigError(f"{cfg.source}: label_sets[{i}] names model '{s.model}'{nearest_key(s.model, names)}"
                                   f" (served models: {', '.join(sorted(names))})")
        servable = [h for h in classify_heads() if not HEADS[h].selection]  # no labelled split at serve time
        if s.head not in servable:
            raise ServeConfigError(f"{cfg.source}: label_sets[{i}].head must be one of {', '.join(servable)}, "
                                   f"got {s.head!r}")
    for i, e in enumerate(cfg.endpoints):
        _check_endpoint(e, f"{cfg.source}: endpoints[{i}]")
    for i, u in enumerate(cfg.allow_image_urls):
        p = urlsplit(u) if isinstance(u, str) else None
        if p is None or p.scheme not in ("http", "https") or not p.hostname or not p.path.startswith("/") \
                or "@" in p.netloc:
            raise ServeConfigError(f"{cfg.source}: allow_image_urls[{i}] must be an http(s) URL prefix that includes "
                                   f"a path, such as https://images.example.com/ (got {u!r})")
    return cfg


def _section(raw: Any, cls: type, where: str):
    d = _check_keys(raw or {}, cls, where)
    defaults = cls()
    for k, v in d.items():
        default = getattr(defaults, k)
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise ServeConfigError(f"{where}.{k} must be true or false, got {v!r}")
            continue
        integer = isinstance(default, int)
        d[k] = _number(v, f"{where}.{k}", 0 if k == "decode_workers" else (1 if integer else 0.0), integer)
    return cls(**d)


def parse_config(raw: Any, source: str, base: Path) -> ServeConfig:
    top = _check_keys(raw, ServeConfig, source)
    urls = top.get("allow_image_urls") or []
    if not isinstance(urls, list):
        raise ServeConfigError(f"{source}: allow_image_urls must be a list of URL prefixes")
    cfg = ServeConfig(models=_entries(top.get("models"), ModelEntry, f"{source}: models", base),
                      label_sets=_entries(top.get("label_sets"), LabelSetEntry, f"{source}: label_sets", base),
                      routers=_entries(top.get("routers"), RouterEntry, f"{source}: routers", base),
                      endpoints=_entries(top.get("endpoints"), EndpointEntry, f"{source}: endpoints", base),
                      allow_image_urls=tuple(urls),
                      batching=_section(top.get("batching"), Batching, f"{source}: batching"),
                      limits=_section(top.get("limits"), Limits, f"{source}: limits"), source=source)
    return _check(cfg)


def load_config(path: str | Path | None) -> ServeConfig:
    """The config at ``path`` (YAML or JSON), or the built-in default: random-tiny on the shipped ImageNet names."""
    if path is None:
        return default_config()
    from visroute.safe_load import SafeLoadError, read_yaml

    p = Path(path)
    try:
        raw = read_yaml(p, "serve config")
    except SafeLoadError as e:
        raise ServeConfigError(str(e)) from None
    return parse_config(raw, str(p), p.resolve().parent)


def default_config() -> ServeConfig:
    model = ModelEntry(DEFAULT_MODEL_NAME, "random-tiny")
    return ServeConfig(models=(model,), label_sets=(LabelSetEntry("imagenet", str(SHIPPED_IMAGENET), model.name),))


# -- the service's own keys ---------------------------------------------------------------------------
def serve_api_keys(keys_file: str | Path | None, environ: dict | None = None) -> list[str]:
    """The service's accepted API keys: ``$VISROUTE_SERVE_API_KEYS`` (comma-separated) and/or a file, one per line."""
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(SERVE_KEYS_ENV, "").split(",") if k.strip()]
    if keys_file is not None:
        try:
            text = Path(keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ServeConfigError(f"cannot read the API keys file {keys_file}: {getattr(e, 'strerror', None) or e}") \
                from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ServeConfigError(f"{len(short)} API key(s) shorter than 16 characters; use long random keys "
                               "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return keys
