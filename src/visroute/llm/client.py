"""Generation backends: OpenAI-compatible HTTP servers (OpenAI, vLLM, Ollama, llama.cpp, `transformers serve`)
via the ``openai`` client, and local transformers causal LMs.

Spec strings::

    openai-compatible:<base_url>#<model>   e.g. openai-compatible:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct
    hf:<local dir or hub id>               a transformers causal LM (text only), batched generation

HTTP requests are retried with exponential backoff (tenacity) on timeouts, connection errors, 429 and
5xx; a request that still fails is returned as a failed result (``error`` set), never raised in the
middle of a batch, so the rest of the work is kept. Concurrency is bounded by a thread pool.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from visroute.errors import MissingExtraError, ModelLoadError
from visroute.llm.cache import ResponseCache, request_key


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

    @property
    def ok(self) -> bool:
        return self.error is None


def _image_bytes(image: Any) -> bytes:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        from visroute.data.images import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported image type {type(image).__name__}")


def _image_hash(image: Any) -> str:
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


def _messages(req: ChatRequest, for_key: bool) -> list[dict]:
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
            content.append({"type": "image", "sha256": _image_hash(im)})
        else:
            url = "data:image/png;base64," + base64.b64encode(_image_bytes(im)).decode()
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

    def generate(self, requests: Sequence[ChatRequest]) -> list[GenerationResult]:
        requests = list(requests)
        results: list[GenerationResult | None] = [None] * len(requests)
        from visroute.data.images import ImageDecodeError

        keys: list[str | None] = []
        for i, r in enumerate(requests):
            try:
                keys.append(request_key(self.spec, _messages(r, for_key=True), self.params))
            except ImageDecodeError as e:  # an unreadable image fails its own request, not the batch
                keys.append(None)
                results[i] = GenerationResult("", error=f"image: {e}", attempts=0)
        todo = []
        for i, key in enumerate(keys):
            if key is None:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                # latency and tokens are those of the original call: what the call costs, though this one was free
                results[i] = GenerationResult(hit["text"], hit["input_tokens"], hit["output_tokens"], hit["latency_s"] or 0.0,
                                              cached=True, attempts=0)
            else:
                todo.append(i)
        if todo:
            fresh = self._generate_uncached([requests[i] for i in todo])
            for i, res in zip(todo, fresh):
                results[i] = res
                if res.ok and self.cache is not None:
                    self.cache.put(keys[i], self.spec, res.text, res.input_tokens, res.output_tokens, res.latency_s)
        return results  # type: ignore[return-value]


class OpenAICompatibleGenerator(Generator):
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 4, backoff_s: float = 0.5, **kw):
        super().__init__(**kw)
        try:
            import openai
        except ImportError as e:
            raise MissingExtraError("llm", "openai", f"the endpoint {base_url}") from e
        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.spec = f"openai-compatible:{base_url}#{model}"
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        key = api_key or os.environ.get("VISROUTE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # retries are ours (tenacity), so the client's own are off
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)

    def _retryable(self, exc: BaseException) -> bool:
        o = self._openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError, o.InternalServerError)):
            return True
        return isinstance(exc, o.APIStatusError) and getattr(exc, "status_code", 0) >= 500

    def _one(self, req: ChatRequest) -> GenerationResult:
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        attempts = 0
        t0 = time.perf_counter()
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.max_retries + 1),
                                    wait=wait_exponential(multiplier=self.backoff_s, max=30),
                                    retry=retry_if_exception(self._retryable), reraise=False):
                with attempt:
                    attempts += 1
                    resp = self.client.chat.completions.create(
                        model=self.model, messages=_messages(req, for_key=False), **self.params)
            text = (resp.choices[0].message.content or "") if resp.choices else ""
            usage = getattr(resp, "usage", None)
            return GenerationResult(text, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None),
                                    time.perf_counter() - t0, attempts=attempts)
        except RetryError as e:
            last = e.last_attempt.exception()
            return GenerationResult("", latency_s=time.perf_counter() - t0, attempts=attempts,
                                    error=f"gave up after {attempts} attempts: {type(last).__name__}: {last}")
        except Exception as e:  # 4xx and other non-retryable errors: recorded, not raised
            return GenerationResult("", latency_s=time.perf_counter() - t0, attempts=attempts,
                                    error=f"{type(e).__name__}: {e}")

    def _generate_uncached(self, requests: Sequence[ChatRequest]) -> list[GenerationResult]:
        if self.concurrency <= 1 or len(requests) <= 1:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))


class HFCausalLMGenerator(Generator):
    """A local transformers causal LM (text only); prompts use the tokenizer's chat template when it has one."""

    def __init__(self, location: str, device: str = "cpu", batch_size: int = 8, **kw):
        super().__init__(**kw)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModelForCausalLM.from_pretrained(location).to(device).eval()
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"could not load causal LM '{location}' ({str(e).splitlines()[0]})") from e
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.spec = f"hf:{location}"
        self.device = device
        self.batch_size = batch_size

    def _render(self, req: ChatRequest) -> str:
        if req.images:
            raise ModelLoadError(f"{self.spec} is a text-only model; it cannot take images")
        if getattr(self.tokenizer, "chat_template", None):
            msgs = _messages(req, for_key=False)
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return (req.system + "\n\n" if req.system else "") + req.prompt

    def _generate_uncached(self, requests: Sequence[ChatRequest]) -> list[GenerationResult]:
        import torch

        out = []
        for s in range(0, len(requests), self.batch_size):
            chunk = requests[s : s + self.batch_size]
            t0 = time.perf_counter()
            enc = self.tokenizer([self._render(r) for r in chunk], return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_tokens, do_sample=self.temperature > 0,
                                          temperature=self.temperature or None, pad_token_id=self.tokenizer.pad_token_id)
            dt = (time.perf_counter() - t0) / len(chunk)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, ids in zip(enc["attention_mask"], new):
                n_out = int((ids != self.tokenizer.pad_token_id).sum())
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                out.append(GenerationResult(text, int(row.sum()), n_out, dt))
        return out


def parse_generator_spec(spec: str) -> tuple[str, str, str | None]:
    backend, sep, rest = spec.partition(":")
    if backend == "openai-compatible" and sep:
        url, hash_, model = rest.partition("#")
        if not url or not hash_ or not model:
            raise ModelLoadError(f"'{spec}': use openai-compatible:<base_url>#<model>, e.g. "
                                 "openai-compatible:http://127.0.0.1:8000/v1#my-model")
        return backend, url, model
    if backend == "hf" and sep and rest:
        return backend, rest, None
    if backend == "random-tiny" and rest in ("llama", "llava"):
        return backend, rest, None
    raise ModelLoadError(f"unknown LLM spec '{spec}' (openai-compatible:<base_url>#<model>, hf:<local dir>, "
                         "or the smoke-test models random-tiny:llama / random-tiny:llava)")


def load_generator(spec: str, cache: ResponseCache | None = None, **kw) -> Generator:
    backend, location, model = parse_generator_spec(spec)
    if backend == "openai-compatible":
        http = {k: v for k, v in kw.items() if k in ("api_key", "timeout", "max_retries", "concurrency", "backoff_s",
                                                       "max_tokens", "temperature")}
        return OpenAICompatibleGenerator(location, model, cache=cache, **http)
    if backend == "random-tiny":
        from visroute.models.tiny import ensure_random_tiny

        location = str(ensure_random_tiny(location))
    allowed = {k: v for k, v in kw.items() if k in ("max_tokens", "temperature", "device", "batch_size")}
    if allowed.get("device") == "auto":
        import torch

        allowed["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if _is_vision_language(location):
        from visroute.llm.hf_vlm import HFVisionLanguageGenerator

        gen = HFVisionLanguageGenerator(location, cache=cache, **allowed)
    else:
        gen = HFCausalLMGenerator(location, cache=cache, **allowed)
    if backend == "random-tiny":
        gen.spec = spec  # results name the smoke-test model, not its cache directory
    return gen


def _is_vision_language(location: str) -> bool:
    """A transformers checkpoint with a vision tower (LLaVA, Qwen2-VL, PaliGemma, BLIP-2, ...)."""
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the config of '{location}' ({str(e).splitlines()[0]}); point at a local "
                             "model directory with hf:/path/to/dir") from e
    return hasattr(cfg, "vision_config")
