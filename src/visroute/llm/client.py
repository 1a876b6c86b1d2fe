"""Generation backends: OpenAI-compatible HTTP servers (OpenAI, vLLM, Ollama, llama.cpp, `transformers serve`)
and local transformers causal LMs.

Specs follow the one grammar of ``visroute.models.spec``; the generative forms are::

    openai-compatible:<base_url>#<model>   e.g. openai-compatible:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct
    openai:<model>                         the official OpenAI endpoint
    hf:<local dir or hub id>               a transformers causal LM or vision-language model, batched generation
    random-tiny:llama | random-tiny:llava  random-weight smoke-test models

An HTTP attempt has a total deadline (``timeout`` seconds, however the server trickles) and a maximum answer size
(``visroute.llm.http``). Timeouts, connection errors, 429 and 5xx are retried with exponential backoff (or the
server's Retry-After); a request that still fails, or whose answer is not a usable chat completion (not JSON, an
HTML page, no choices, null or empty content), is returned as a failed result with a one-line ``error``, never
raised in the middle of a batch and never cached. Requests in flight per endpoint are bounded process-wide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from visroute.errors import ModelLoadError
from visroute.llm.base import ChatRequest, GenerationResult, Generator, openai_messages
from visroute.llm.cache import ResponseCache
from visroute.llm.http import MAX_RESPONSE_BYTES, EndpointLimiter, HTTPFailure, HTTPTransport

__all__ = ["ChatRequest", "GenerationResult", "Generator", "HFCausalLMGenerator", "OpenAICompatibleGenerator",
           "load_generator"]

_RETRY_STATUS = {408, 409, 425, 429}


class OpenAICompatibleGenerator(Generator):
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 4, backoff_s: float = 0.5,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, **kw):
        super().__init__(**kw)
        self.base_url = base_url
        self.model = model
        self.spec = f"openai-compatible:{base_url}#{model}"
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        key = api_key or "EMPTY"  # keys come only from the user's endpoint configuration (visroute.llm.endpoints)
        self.client = HTTPTransport(base_url, key, timeout=timeout, max_bytes=max_response_bytes)
        self.limiter = EndpointLimiter.for_endpoint(base_url, concurrency)

    def _payload(self, req: ChatRequest) -> bytes:
        return json.dumps({"model": self.model, "messages": openai_messages(req, for_key=False), **self.params},
                          ensure_ascii=False).encode()

    def _attempt(self, payload: bytes) -> GenerationResult:
        with self.limiter:
            ans = self.client.post("/chat/completions", payload)
        if ans.status != 200:
            retryable = ans.status >= 500 or ans.status in _RETRY_STATUS
            raise HTTPFailure(f"HTTP {ans.status}: {_error_excerpt(ans.body)}", retryable, ans.retry_after)
        text, n_in, n_out = parse_chat_completion(ans.body, ans.content_type)
        return GenerationResult(text, n_in, n_out)

    def _one(self, req: ChatRequest) -> GenerationResult:
        t0 = time.perf_counter()
        try:
            payload = self._payload(req)
        except Exception as e:  # an image that cannot be encoded fails its own request
            return GenerationResult("", error=f"request not built: {type(e).__name__}: {e}", attempts=0)
        attempts, failure = 0, None
        for attempt in range(self.max_retries + 1):
            if failure is not None:
                wait = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(min(30.0, max(wait, failure.retry_after or 0.0)))
            attempts += 1
            try:
                res = self._attempt(payload)
            except HTTPFailure as f:
                failure = f
                if not f.retryable:
                    break
                continue
            res.latency_s, res.attempts = time.perf_counter() - t0, attempts
            return res
        assert failure is not None
        reason = f"gave up after {attempts} attempts: {failure.reason}" if failure.retryable and attempts > 1 \
            else failure.reason
        return GenerationResult("", latency_s=time.perf_counter() - t0, attempts=attempts, error=reason)

    def _iter_uncached(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, GenerationResult]]:
        """Results as they complete, so each answer is cached the moment it is paid for."""
        if self.concurrency <= 1 or len(requests) <= 1:
            for i, r in enumerate(requests):
                yield i, self._one(r)
            return
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


def parse_chat_completion(body: bytes, content_type: str = "") -> tuple[str, int | None, int | None]:
    """(text, prompt tokens, completion tokens) of a chat completion; HTTPFailure (not retried) when the answer is
    not one, with a one-line reason."""
    head = body[:200].lstrip().lower()
    if "html" in content_type.lower() or head.startswith((b"<!doctype", b"<html")):
        raise HTTPFailure(f"invalid answer: an HTML page ({content_type or 'no content type'}), not JSON", False)
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise HTTPFailure(f"invalid answer: not UTF-8 (byte {e.start})", False) from None
    except (json.JSONDecodeError, RecursionError) as e:
        what = f"{e.msg}, char {e.pos}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise HTTPFailure(f"invalid answer: not JSON ({what})", False) from None
    if not isinstance(doc, dict):
        raise HTTPFailure(f"invalid answer: expected a JSON object, got {type(doc).__name__}", False)
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        err = doc.get("error")
        why = f"error {_error_excerpt(json.dumps(doc).encode())}" if err else "no choices"
        raise HTTPFailure(f"invalid answer: {why}", False)
    msg = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(msg, dict):
        raise HTTPFailure("invalid answer: choices[0] has no message", False)
    content = msg.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if content is None:
        finish = choices[0].get("finish_reason")
        raise HTTPFailure("invalid answer: the message content is null" + (f" (finish_reason {finish})" if finish else ""),
                          False)
    if not isinstance(content, str):
        raise HTTPFailure(f"invalid answer: the message content is a {type(content).__name__}, not text", False)
    if not content.strip():
        raise HTTPFailure("invalid answer: the message content is empty", False)
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(v) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _error_excerpt(body: bytes) -> str:
    """The server's error message (OpenAI's {"error": {"message"}}) or the start of the body, on one line."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
        err = doc.get("error") if isinstance(doc, dict) else None
        text = str(err.get("message", err) if isinstance(err, dict) else err or doc)
    except ValueError:
        pass
    line = " ".join(text.split())
    return (line[:160] + "...") if len(line) > 160 else (line or "empty body")


class HFCausalLMGenerator(Generator):
    """A local transformers causal LM (text only); prompts use the tokenizer's chat template when it has one."""

    def __init__(self, location: str, device: str = "cpu", batch_size: int = 8, **kw):
        super().__init__(**kw)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from visroute.models.hf import check_hf_location

        check_hf_location(location)
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
            msgs = openai_messages(req, for_key=False)
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


def load_generator(spec, cache: ResponseCache | None = None, **kw) -> Generator:
    """A generator for a model spec (``visroute.models.spec``): an OpenAI-compatible server
    (``openai-compatible:<base_url>#<model>``, ``openai:<model>``), a local transformers causal LM or
    vision-language model (``hf:<dir or hub id>``, a local directory) or a smoke-test model
    (``random-tiny:llama`` / ``random-tiny:llava``). Keyword arguments a backend does not take are ignored."""
    from visroute.models.spec import parse_model_spec

    parsed = parse_model_spec(spec)
    if parsed.kind == "contrastive":
        raise ModelLoadError(f"'{parsed.text}' is a contrastive image-text encoder, not a generative model; "
                             "use it as a classification model, or give a vlm/llm such as openai:<model> or hf:<dir>")
    if parsed.backend == "openai-compatible":
        from visroute.llm.endpoints import resolve_endpoint

        # the URL and its key come from the user's configuration. ``trusted_endpoints``: URLs the user typed; None
        # (a direct call from the user's own code) vouches for the spec's own URL. build_pipeline always passes a
        # tuple, so specs read from grids, records and router bundles are checked against the configuration.
        trusted = kw.get("trusted_endpoints")
        if trusted is None:
            trusted = () if parsed.location.startswith("@") else (parsed.location,)
        base_url, key = resolve_endpoint(parsed.location, tuple(trusted))
        http = {k: v for k, v in kw.items() if k in ("timeout", "max_retries", "concurrency", "backoff_s",
                                                       "max_tokens", "temperature", "max_response_bytes")}
        gen = OpenAICompatibleGenerator(base_url, parsed.model, api_key=key, cache=cache, **http)
        gen.spec = parsed.text  # prices, caches and records name the endpoint as the spec did
        return gen
    location = parsed.location
    if parsed.backend == "random-tiny":
        from visroute.testing.tiny_models import ensure_random_tiny

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
    if parsed.backend == "random-tiny":
        gen.spec = parsed.text  # results name the smoke-test model, not its cache directory
    return gen


def _is_vision_language(location: str) -> bool:
    """A transformers checkpoint with a vision tower (LLaVA, Qwen2-VL, PaliGemma, BLIP-2, ...)."""
    from visroute.models.hf import check_hf_location

    check_hf_location(location)  # a missing directory or no network: one line at once, not 25 s of retries
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the config of '{location}' ({str(e).splitlines()[0]}); point at a local "
                             "model directory with hf:/path/to/dir") from e
    return hasattr(cfg, "vision_config")
