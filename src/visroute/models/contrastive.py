"""The interface every contrastive (CLIP-family) backend implements.

Images go through ``preprocess`` (one PIL image -> dict of tensors; picklable, so it runs in
DataLoader workers), ``collate`` stacks those dicts, and ``encode_images`` turns a batch into
L2-normalised embeddings. Texts go through ``encode_texts`` in large batches. Scores follow the
model's own training rule: CLIP uses softmax over ``scale * cos``, SigLIP a sigmoid of
``scale * cos + bias``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from visroute.errors import ModelLoadError

Batch = dict[str, torch.Tensor]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{device}' requested but CUDA is not available on this machine")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"device '{device}' requested but MPS is not available on this machine")
    if kind not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """'auto' is fp16 on cuda and fp32 elsewhere; fp16 on the CPU is refused (slow and lossy there)."""
    dtype = (dtype or "auto").lower()
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}' (use auto, fp32, fp16 or bf16)")
    if dtype == "fp16" and device.type == "cpu":
        raise ModelLoadError("fp16 is not supported on the CPU; use --dtype fp32 or bf16 there")
    if dtype == "bf16" and device.type == "mps":
        raise ModelLoadError("bf16 is not supported on MPS; use fp16 or fp32")
    return DTYPES[dtype]


class ContrastiveModel(ABC):
    """A loaded image-text model with a shared embedding space."""

    #: canonical spec string
    spec: str
    #: "softmax" (CLIP) or "sigmoid" (SigLIP)
    score_rule: str
    device: torch.device
    dtype: torch.dtype
    #: exp(learned logit scale) and the additive logit bias (0 for CLIP)
    logit_scale: float
    logit_bias: float
    #: maximum number of text tokens; longer prompts are truncated by the tokeniser
    context_length: int
    #: True for randomly initialised smoke-test models: predictions are at chance
    is_random: bool = False

    def __deepcopy__(self, memo: dict) -> "ContrastiveModel":
        """A loaded model is an immutable shared resource, so a deep copy is the model itself.

        Heads take the model as a scikit-learn parameter and ``sklearn.base.clone`` deep-copies
        parameters; copying the weights there would double memory and give the same answers.
        """
        return self

    @property
    @abstractmethod
    def preprocess(self) -> Callable[[Any], Batch]:
        """Picklable callable: RGB PIL image -> dict of unbatched tensors."""

    def collate(self, items: Sequence[Batch]) -> Batch:
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    @abstractmethod
    def _image_forward(self, batch: Batch) -> torch.Tensor:
        """Unnormalised image embeddings for a collated batch already on the device."""

    @abstractmethod
    def _text_forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised text embeddings for one batch of strings."""

    @torch.inference_mode()
    def encode_images(self, batch: Batch | Sequence[Any]) -> torch.Tensor:
        """L2-normalised float32 image embeddings (on the CPU) for a collated batch or PIL images."""
        if not isinstance(batch, dict):
            batch = self.collate([self.preprocess(im) for im in batch])
        batch = {
            k: v.to(self.device, dtype=self.dtype if v.is_floating_point() else v.dtype, non_blocking=True)
            for k, v in batch.items()
        }
        emb = self._image_forward(batch).float()
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024) -> torch.Tensor:
        """L2-normalised float32 text embeddings (on the CPU), computed in batches of ``batch_size``."""
        texts = list(texts)
        if not texts:
            raise ValueError("encode_texts needs at least one text")
        out = []
        for start in range(0, len(texts), batch_size):
            emb = self._text_forward(texts[start : start + batch_size]).float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Model logits for normalised embeddings: scale * cos (+ bias for SigLIP)."""
        return self.logit_scale * (image_emb.float() @ text_emb.float().T) + self.logit_bias

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities by the model's own rule (softmax over classes, or per-class sigmoid)."""
        if self.score_rule == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    @property
    def weights_fingerprint(self) -> str:
        """Short hash of the weights (names, shapes, dtypes and a strided sample of values); cached."""
        if getattr(self, "_weights_fp", None) is None:
            import hashlib

            h = hashlib.sha256()
            for name, t in sorted(self.model.state_dict().items()):
                flat = t.detach().reshape(-1)
                step = max(1, flat.numel() // 4096)
                sample = flat[::step].float().cpu().numpy().tobytes()
                h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
                h.update(sample)
            self._weights_fp = h.hexdigest()[:16]
        return self._weights_fp

    @property
    def preprocess_fingerprint(self) -> str:
        """Text that changes whenever image preprocessing changes (part of the feature-cache key)."""
        return repr(self.preprocess)

    def describe(self) -> dict[str, Any]:
        """Facts written into result files and printed by the CLI."""
        return {
            "model": self.spec,
            "score_rule": self.score_rule,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "random_weights": self.is_random,
        }
