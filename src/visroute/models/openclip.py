"""open_clip backend (optional extra: ``pip install 'visroute[openclip]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from visroute.errors import MissingExtraError, ModelLoadError
from visroute.models.contrastive import Batch, ContrastiveModel


class OpenCLIPImagePreprocess:
    """Wraps open_clip's eval transform so it returns the dict every backend returns."""

    def __init__(self, transform: Any):
        self.transform = transform

    def __repr__(self) -> str:
        return f"OpenCLIPImagePreprocess({self.transform!r})"

    def __call__(self, image: Any) -> Batch:
        return {"pixel_values": self.transform(image)}


class OpenCLIPModel(ContrastiveModel):
    def __init__(self, model: Any, transform: Any, tokenizer: Any, spec: str,
                 device: torch.device, dtype: torch.dtype):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.dtype = dtype
        bias = getattr(model, "logit_bias", None)
        self.score_rule = "sigmoid" if bias is not None else "softmax"
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.logit_bias = float(bias.detach().float()) if bias is not None else 0.0
        self.context_length = int(getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))
        self._preprocess = OpenCLIPImagePreprocess(transform)

    @property
    def preprocess(self) -> OpenCLIPImagePreprocess:
        return self._preprocess

    def _image_forward(self, batch: Batch) -> torch.Tensor:
        return self.model.encode_image(batch["pixel_values"])

    def _text_forward(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens)


def load_openclip(name: str, pretrained: str | None, spec: str, device: torch.device,
                  dtype: torch.dtype) -> OpenCLIPModel:
    try:
        import open_clip
    except ImportError as e:
        raise MissingExtraError("openclip", "open_clip_torch", f"model '{spec}'") from e
    no_network = ""
    from_hub = name.startswith("hf-hub:") or bool(pretrained and not Path(pretrained).expanduser().exists())
    if from_hub:
        from visroute.models.hf import hub_reachable, hub_offline

        if not hub_offline() and not hub_reachable():
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True  # fail at once from the local cache instead of ~25 s of retries
            no_network = (f" No network: {constants.ENDPOINT} cannot be reached, so only the local cache was "
                          "searched (set HF_HUB_OFFLINE=1 to skip this check).")
    try:
        model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained, device="cpu")
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError/hub errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        tried = f"architecture '{name}'" + (f" with pretrained '{pretrained}'" if pretrained else "")
        raise ModelLoadError(
            f"could not load open_clip {tried} ({type(e).__name__}: {first}).{no_network} Known architectures: "
            "open_clip.list_models(); known tags: open_clip.list_pretrained(). For local weights use "
            "openclip:<arch>//path/to/checkpoint.pt or openclip:local-dir:/path/to/dir "
            "(open_clip_config.json + weights)."
        ) from e
    return OpenCLIPModel(model, transform, tokenizer, spec, device, dtype)
