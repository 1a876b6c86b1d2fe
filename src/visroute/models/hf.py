"""transformers backend for CLIP, SigLIP and SigLIP2 (and other dual encoders with the same API)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from visroute.errors import ModelLoadError
from visroute.log import get_logger
from visroute.models.contrastive import Batch, ContrastiveModel

SIGMOID_MODEL_TYPES = {"siglip", "siglip2"}
HUB_PROBE_S = 1.5  # how long to look for the hub before treating this machine as offline

log = get_logger(__name__)
_hub_state: dict[str, bool] = {}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub sees it now (set by the user, or by ``check_hf_location`` below)."""
    import os

    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable() -> bool:
    """Can a TCP connection to the hub (or the https proxy in front of it) be opened within HUB_PROBE_S?

    Without this, a machine with no network spends ~25 s in huggingface_hub's retries per file before failing.
    Name resolution cannot be given a timeout, so the probe runs in a thread that is not waited for longer.
    """
    if "reachable" in _hub_state:
        return _hub_state["reachable"]
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    host, port = parts.hostname or "huggingface.co", parts.port or 443
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 80
    result = {"ok": False}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_S).close()
            result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_PROBE_S + 0.5)
    _hub_state["reachable"] = result["ok"]
    return result["ok"]


def check_hf_location(location: str) -> None:
    """Fail fast, in one line saying what to do, before transformers tries to load ``location``.

    A path that does not exist is named as such (not as an invalid hub id). For a hub id with no network in
    reach, huggingface_hub is switched to offline mode for the rest of the process (the local cache is used,
    at once), and a model not in that cache is an error that says to use a local directory or HF_HUB_OFFLINE=1.
    """
    path = Path(location).expanduser()
    looks_like_path = location.startswith(("/", "./", "../", "~", ".\\")) or location.count("/") >= 2
    if path.is_dir():
        return
    if path.exists():
        raise ModelLoadError(f"'{location}' is a file, not a model directory (hf:<dir> needs a directory saved "
                             "with save_pretrained, with its config.json)")
    if looks_like_path:
        raise ModelLoadError(f"the model directory '{location}' does not exist")
    if hub_offline() or hub_reachable():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    constants.HF_HUB_OFFLINE = True  # no network: ask no more of it in this process
    try:
        cached = isinstance(try_to_load_from_cache(location, "config.json"), str)
    except Exception:  # not a valid hub id either: transformers says why below
        cached = False
    if not cached:
        raise ModelLoadError(f"cannot reach {constants.ENDPOINT} to download '{location}', and it is not in the "
                             "local Hugging Face cache: without network, use a local directory (hf:/path/to/model_dir)"
                             ", or set HF_HUB_OFFLINE=1 to use only models already cached")
    log.warning("cannot reach %s: using the cached copy of '%s' (set HF_HUB_OFFLINE=1 to skip this check)",
                constants.ENDPOINT, location)


class HFImagePreprocess:
    """Runs the model's own image processor on one image (the same pixels transformers' pipeline sees)."""

    def __init__(self, image_processor: Any):
        self.image_processor = image_processor

    def __repr__(self) -> str:
        return f"HFImagePreprocess({type(self.image_processor).__name__}, {self.image_processor.to_json_string()})"

    def __call__(self, image: Any) -> Batch:
        out = self.image_processor(images=image, return_tensors="pt")
        return {k: v[0] for k, v in out.items() if isinstance(v, torch.Tensor)}


class HFContrastiveModel(ContrastiveModel):
    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, spec: str,
                 device: torch.device, dtype: torch.dtype, is_random: bool = False):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.is_random = is_random
        cfg = model.config
        self.model_type = cfg.model_type
        self.score_rule = "sigmoid" if self.model_type in SIGMOID_MODEL_TYPES or hasattr(model, "logit_bias") else "softmax"
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.logit_bias = float(model.logit_bias.detach().float()) if hasattr(model, "logit_bias") else 0.0
        text_cfg = getattr(cfg, "text_config", cfg)
        self.context_length = int(getattr(text_cfg, "max_position_embeddings", 77))
        self._preprocess = HFImagePreprocess(image_processor)

    @property
    def preprocess(self) -> HFImagePreprocess:
        return self._preprocess

    def _image_forward(self, batch: Batch) -> torch.Tensor:
        return _embeds(self.model.get_image_features(**batch))

    def _text_forward(self, texts: Sequence[str]) -> torch.Tensor:
        if self.score_rule == "sigmoid":
            # SigLIP was trained on texts padded to the full context; its pooled token is the last one.
            kw = dict(padding="max_length", max_length=self.context_length, truncation=True)
        else:
            kw = dict(padding=True, max_length=self.context_length, truncation=True)
        tok = self.tokenizer(list(texts), return_tensors="pt", **kw)
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask", "position_ids")}
        return _embeds(self.model.get_text_features(**tok))


def _embeds(out: Any) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4.x and a ModelOutput (pooler_output) in 5.x."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def load_hf_contrastive(location: str, spec: str, device: torch.device, dtype: torch.dtype,
                        is_random: bool = False, image_backend: str | None = "pil") -> HFContrastiveModel:
    """Load model, image processor and tokenizer from a hub id or a local directory.

    ``image_backend`` picks the image processor implementation: "pil" (default: the PIL resize the
    original CLIP and open_clip preprocessing use, and several times faster per image on a CPU
    worker than transformers' torchvision processor), "torchvision", or None for transformers' own
    choice (what ``pipeline()`` uses).
    """
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer
    except ImportError as e:  # pragma: no cover - transformers is a core dependency
        raise ModelLoadError(f"transformers is not importable: {e}") from e
    check_hf_location(location)
    offline = hub_offline()
    is_dir = Path(location).expanduser().is_dir()
    try:
        model = AutoModel.from_pretrained(location, dtype=dtype)
        image_processor = _load_image_processor(AutoImageProcessor, location, image_backend)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, EnvironmentError, pickle.UnpicklingError) as e:  # a refused pickle too: one line
        where = f"local directory '{location}'" if is_dir else f"Hugging Face hub id '{location}'"
        hint = (
            "Point at local weights with --model hf:/path/to/model_dir (a directory saved with "
            "save_pretrained), or run `visroute classify --model random-tiny` for an offline smoke test."
        )
        net = " HF_HUB_OFFLINE is set, so only the local cache was searched." if offline and not is_dir else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load {where} with transformers ({first}).{net} {hint}") from e
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ModelLoadError(
            f"'{location}' is a {type(model).__name__}, not a dual image-text encoder "
            "(CLIP, SigLIP, SigLIP2); it has no get_image_features/get_text_features"
        )
    return HFContrastiveModel(model, image_processor, tokenizer, spec, device, dtype, is_random=is_random)


def _load_image_processor(auto_cls: Any, location: str, backend: str | None) -> Any:
    if backend is None:
        return auto_cls.from_pretrained(location)
    try:
        return auto_cls.from_pretrained(location, backend=backend)
    except (ValueError, KeyError, ImportError):
        return auto_cls.from_pretrained(location)  # this model has only one implementation
