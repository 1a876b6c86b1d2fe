"""Where requests go and which key goes with them: decided only by the user's own configuration.

A grid, a records file or a router bundle may have been written by someone else, so an endpoint URL named
inside one is contacted only when the user's configuration names it too:

- ``VISROUTE_ALLOW_ENDPOINTS``: comma-separated base URLs (``http://127.0.0.1:8000/v1,https://api.openai.com/v1``);
- an endpoints file, ``$VISROUTE_ENDPOINTS`` or ``$XDG_CONFIG_HOME/visroute/endpoints.yaml``
  (``~/.config/visroute/endpoints.yaml``)::

      local-vllm: {base_url: "http://127.0.0.1:8000/v1"}
      openai: {base_url: "https://api.openai.com/v1", api_key_env: OPENAI_API_KEY}

  where a spec may name an entry instead of a URL: ``openai-compatible:@local-vllm#Qwen2-VL-7B``;
- URLs the user typed on the command line (``visroute eval --vlm openai-compatible:URL#model``), passed in as
  ``trusted``.

A key goes only to the endpoint it was configured for: the ``api_key_env`` of the matching entry, or
``OPENAI_API_KEY`` for https://api.openai.com only. Any other endpoint gets no key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from visroute.errors import ModelLoadError

ALLOW_ENV = "VISROUTE_ALLOW_ENDPOINTS"
FILE_ENV = "VISROUTE_ENDPOINTS"
OPENAI_URL = "https://api.openai.com/v1"


class EndpointNotAllowed(ModelLoadError):
    """An endpoint that the user's configuration does not name."""


def normalise_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelLoadError(f"'{url}' is not an http(s) base URL")
    return f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str
    api_key_env: str | None = None


def config_file() -> Path:
    env = os.environ.get(FILE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "visroute" / "endpoints.yaml"


def load_endpoints(path: Path | None = None) -> dict[str, Endpoint]:
    """The user's named endpoints ({} when no file); a malformed file is one clear error."""
    path = path or config_file()
    if not path.is_file():
        if os.environ.get(FILE_ENV):
            raise ModelLoadError(f"{FILE_ENV}={path}: no such file")
        return {}
    from visroute.safe_load import SafeLoadError, read_yaml

    try:
        raw = read_yaml(path, "endpoints file") or {}
    except SafeLoadError as e:
        raise ModelLoadError(str(e)) from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: expected a mapping of endpoint names to {{base_url, api_key_env}}")
    out = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("base_url"), str):
            raise ModelLoadError(f"{path}: endpoint '{name}' needs a base_url string")
        unknown = set(entry) - {"base_url", "api_key_env"}
        if unknown:
            raise ModelLoadError(f"{path}: endpoint '{name}' has unknown key(s) {sorted(unknown)} "
                                 "(valid: base_url, api_key_env)")
        out[str(name)] = Endpoint(str(name), normalise_url(entry["base_url"]), entry.get("api_key_env"))
    return out


def resolve_endpoint(url_or_name: str, trusted: tuple[str, ...] = ()) -> tuple[str, str]:
    """(base URL, API key) for a spec's endpoint part, or EndpointNotAllowed when the user configured none."""
    named = load_endpoints()
    if url_or_name.startswith("@"):
        ep = named.get(url_or_name[1:])
        if ep is None:
            raise EndpointNotAllowed(f"endpoint '{url_or_name[1:]}' is not in your endpoints file {config_file()}")
        return ep.base_url, _key(ep)
    url = normalise_url(url_or_name)
    allowed = {normalise_url(u) for u in os.environ.get(ALLOW_ENV, "").split(",") if u.strip()}
    allowed |= {normalise_url(u) for u in trusted}
    match = next((ep for ep in named.values() if ep.base_url == url), None)
    if match is None and url not in allowed:
        raise EndpointNotAllowed(
            f"endpoint {url} is named by a spec, grid or router file, not by your configuration, so it is not "
            f"contacted; to allow it, set {ALLOW_ENV}={url} or add it to {config_file()}")
    if match is not None:
        return url, _key(match)
    return url, (os.environ.get("OPENAI_API_KEY") or "EMPTY") if url == OPENAI_URL else "EMPTY"


def _key(ep: Endpoint) -> str:
    if ep.api_key_env:
        key = os.environ.get(ep.api_key_env)
        if not key:
            raise ModelLoadError(f"endpoint '{ep.name}' takes its key from ${ep.api_key_env}, which is not set")
        return key
    return (os.environ.get("OPENAI_API_KEY") or "EMPTY") if ep.base_url == OPENAI_URL else "EMPTY"
