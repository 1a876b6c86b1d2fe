"""What `visroute models` shows: known specs and whether their weights are already on this machine."""

from __future__ import annotations

import json
from pathlib import Path

from visroute.log import get_logger
from visroute.models.spec import KNOWN_MODELS, RANDOM_TINY, parse_model_spec

log = get_logger(__name__)

CONTRASTIVE_TYPES = {"clip", "siglip", "siglip2", "chinese_clip", "altclip", "align"}


def _hf_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:  # not a hub id (e.g. a path that does not exist): nothing of it is cached
        return False


def _hub_cache_repos() -> list:
    """Repos in the local Hugging Face cache; none before the first download. A corrupt cache is reported."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    try:
        return list(scan_cache_dir().repos)
    except CacheNotFound:
        return []
    except CorruptedCacheException as e:
        log.warning("the Hugging Face cache could not be read (%s); models in it are shown as not cached", e)
        return []


def _openclip_cached(arch: str, tag: str | None) -> bool:
    if not tag:
        return False
    if Path(tag).expanduser().is_file():
        return True
    try:
        import open_clip
    except ImportError:  # the openclip extra is not installed: its models cannot be cached here
        return False
    hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "")
    repo = hub.strip("/").split("/")
    repo_id = "/".join(repo[:2]) if len(repo) >= 2 else ""
    return bool(repo_id) and any(r.repo_id == repo_id for r in _hub_cache_repos())


def is_available_locally(spec: str) -> bool:
    parsed = parse_model_spec(spec)
    if parsed.backend == "hf":
        return Path(parsed.location).expanduser().is_dir() or _hf_cached(parsed.location)
    if parsed.backend == "openclip":
        if parsed.location.startswith("local-dir:"):
            return Path(parsed.location[len("local-dir:"):]).is_dir()
        return _openclip_cached(parsed.location, parsed.pretrained)
    if parsed.backend == "random-tiny":
        return True  # built locally on first use
    return False


def cached_hub_models() -> list[str]:
    """Hub repos in the local Hugging Face cache whose config is a CLIP-family model."""
    repos = _hub_cache_repos()
    found = []
    for repo in repos:
        if repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            cfg = next((f.file_path for f in rev.files if f.file_name == "config.json"), None)
            if cfg is None:
                continue
            try:
                if json.loads(Path(cfg).read_text()).get("model_type") in CONTRASTIVE_TYPES:
                    found.append(repo.repo_id)
                    break
            except (OSError, ValueError):
                continue
    return sorted(found)


def list_models() -> list[dict]:
    """Every built-in spec (aliases, then the random-tiny smoke-test models of both kinds), then cached hub models."""
    rows = [{"name": name, "spec": spec, "kind": "contrastive", "cached": is_available_locally(spec)}
            for name, spec in KNOWN_MODELS.items()]
    known = {r["spec"] for r in rows}
    for arch, kind in RANDOM_TINY.items():
        if f"random-tiny:{arch}" not in known:   # generators (VLM / LLM) have no alias: listed by their spec
            rows.append({"name": f"random-tiny:{arch}", "spec": f"random-tiny:{arch}", "kind": kind, "cached": True})
    for repo_id in cached_hub_models():
        if f"hf:{repo_id}" not in known:
            rows.append({"name": repo_id, "spec": f"hf:{repo_id}", "kind": "contrastive", "cached": True})
    return rows
