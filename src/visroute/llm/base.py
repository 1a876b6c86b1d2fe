"""What every generation backend shares: the request and result types, OpenAI-style messages, and the
``Generator`` base (cache lookup, per-request failure capture, a warning that counts failures).

Backends (``visroute.llm.client``, ``visroute.llm.hf_vlm``) import from here, never from each other.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from visroute.llm.cache import ResponseCache, request_key
from visroute.llm.cancel import check as check_cancelled
from visroute.log import get_logger

log = get_logger(__name__)


@dataclass
class ChatRequest:
    """One chat turn: a user prompt, optionally with images (PIL images or file paths)."""

    prompt: str
    images: list[Any] = field(default_factory=list)
    system: str | None = None


@dataclass
class GenerationResult:
    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float = 0.0
    cached: bool = False
    error: str | None = None
    attempts: int = 1
    #: mean natural-log probability per generated token, where the backend reports token log-probabilities (local
    #: transformers models always; endpoints when asked, ``logprobs``); exp() of it is the answer's own confidence
    mean_logprob: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def confidence(self) -> float | None:
        """The answer's geometric-mean token probability in (0, 1], or None when no log-probabilities were reported."""
        return None if self.mean_logprob is None else math.exp(self.mean_logprob)


def mean_logprob(values) -> float | None:
    """The mean of per-token log-probabilities, or None unless there is at least one and each is a finite number
    <= 0 (a server's -inf, NaN, a positive value or a non-number makes the whole answer's figure unknown)."""
    vals = list(values)
    if not vals or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v > 1e-6
                       for v in vals):
        return None
    return min(0.0, float(sum(vals)) / len(vals))


class TokenLogprobs:
    """A logits processor for transformers' ``generate`` that keeps the log-probability of each chosen token (the
    log-softmax of the processed scores, as ``compute_transition_scores(..., normalize_logits=True)`` gives it),
    holding one step's scores instead of all ``max_new_tokens`` of them. One instance per ``generate`` call."""

    def __init__(self) -> None:
        self._last: Any = None
        self._taken: list[Any] = []

    def __call__(self, input_ids, scores):
        import torch

        if self._last is not None:  # the token chosen from the previous step's scores is now the last input id
            self._taken.append(self._last.gather(1, input_ids[:, -1:].to(self._last.device))[:, 0])
        self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def means(self, new_ids, stop_ids) -> list[float | None]:
        """Per row of the generated ids (B, T): the mean log-probability of its tokens up to and including the first
        of ``stop_ids`` (EOS / pad); all None when the steps seen do not line up with the ids."""
        import torch

        if self._last is None or new_ids.shape[1] == 0:
            return [None] * new_ids.shape[0]
        taken = torch.stack([*self._taken, self._last.gather(1, new_ids[:, -1:].to(self._last.device))[:, 0]], 1)
        if taken.shape != new_ids.shape:
            return [None] * new_ids.shape[0]
        out = []
        for row, ids in zip(taken.tolist(), new_ids.tolist()):
            n = next((j + 1 for j, t in enumerate(ids) if t in stop_ids), len(ids))
            out.append(mean_logprob(row[:n]))
        return out


def image_png_bytes(image: Any) -> bytes:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        from visroute.data.images import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported image type {type(image).__name__}")


def image_content_hash(image: Any) -> str:
    """Content hash for the cache key: the file's bytes for a path (no decoding), the pixels for a PIL image."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            from visroute.data.images import ImageDecodeError

            raise ImageDecodeError(f"cannot read image {image} ({e})") from None
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def openai_messages(req: ChatRequest, for_key: bool) -> list[dict]:
    """OpenAI chat messages; in the cache key, images are represented by their content hash."""
    msgs = []
    if req.system:
        msgs.append({"role": "system", "content": req.system})
    if not req.images:
        msgs.append({"role": "user", "content": req.prompt})
        return msgs
    content: list[dict] = []
    for im in req.images:
        if for_key:
            content.append({"type": "image", "sha256": image_content_hash(im)})
        else:
            url = "data:image/png;base64," + base64.b64encode(image_png_bytes(im)).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": req.prompt})
    msgs.append({"role": "user", "content": content})
    return msgs


class Generator:
    """Base: cache lookup, bounded concurrency, per-request failure capture."""

    spec: str
    concurrency: int = 1

    def __init__(self, cache: ResponseCache | None = None, max_tokens: int = 256, temperature: float = 0.0):
        self.cache = cache
        self.max_tokens = max_tokens
        self.temperature = temperature

    @property
    def params(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature}

    def _generate_uncached(self, requests: Sequence[ChatRequest]) -> list[GenerationResult]:
        raise NotImplementedError

    def _iter_uncached(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, GenerationResult]]:
        """(position, result) pairs; backends that finish requests one by one yield them as they finish."""
        yield from enumerate(self._generate_uncached(requests))

    def generate(self, requests: Sequence[ChatRequest],
                 on_result: Callable[[GenerationResult], None] | None = None,
                 usable: Callable[[int, str], bool] | None = None) -> list[GenerationResult]:
        """One result per request, in order; a failed request is a result with ``error``, never an exception.
        ``on_result`` is called once per request as its result is known (cache hits first, calls as they finish):
        what a progress bar counts. ``usable(i, text)`` says whether request ``i``'s answer can be used (e.g. it
        names one of the options): an answer that cannot is returned but not cached, and a cached one is asked
        again, so an answer nobody could read is never served back as a free result."""
        check_cancelled()  # a served request answered early (504, client gone): no call is started for it
        requests = list(requests)
        results: list[GenerationResult | None] = [None] * len(requests)
        from visroute.data.images import ImageDecodeError

        tell = on_result or (lambda res: None)
        keys: list[str | None] = []
        for i, r in enumerate(requests):
            try:
                keys.append(request_key(self.spec, openai_messages(r, for_key=True), self.params))
            except ImageDecodeError as e:  # an unreadable image fails its own request, not the batch
                keys.append(None)
                results[i] = GenerationResult("", error=f"image: {e}", attempts=0)
                tell(results[i])
        todo = []
        for i, key in enumerate(keys):
            if key is None:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None and usable is not None and not usable(i, hit["text"]):
                hit = None
            if hit is not None:
                # latency and tokens are those of the original call: what the call costs, though this one was free
                results[i] = GenerationResult(hit["text"], hit["input_tokens"], hit["output_tokens"], hit["latency_s"] or 0.0,
                                              cached=True, attempts=0, mean_logprob=hit.get("mean_logprob"))
                tell(results[i])
            else:
                todo.append(i)
        if todo:
            check_cancelled()
            # each answer is saved the moment it arrives: one already paid for survives a later failure or a kill
            for pos, res in self._iter_uncached([requests[i] for i in todo]):
                i = todo[pos]
                results[i] = res
                if self.cache is not None and res.ok and isinstance(res.text, str) and res.text.strip() and \
                        (usable is None or usable(i, res.text)):
                    self.cache.put(keys[i], self.spec, res.text, res.input_tokens, res.output_tokens, res.latency_s,
                                   res.mean_logprob)
                tell(res)
        _warn_failures(self.spec, results)  # type: ignore[arg-type]
        return results  # type: ignore[return-value]


def _warn_failures(spec: str, results: list[GenerationResult]) -> None:
    """Failed requests are returned, not raised; say how many, once per batch, with the first reason."""
    failed = [r for r in results if not r.ok]
    if failed:
        log.warning("%s: %d of %d request(s) failed and are recorded as errors (first: %s)",
                    spec, len(failed), len(results), failed[0].error)
