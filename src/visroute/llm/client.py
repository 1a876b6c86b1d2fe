"""Generation backends: OpenAI-compatible HTTP servers (OpenAI, vLLM, Ollama, llama.cpp, `transformers serve`)
and local transformers causal LMs.

Specs follow the one grammar of ``visroute.models.spec``; the generative forms are::

    openai-compatible:<base_url>#<model>   e.g. openai-compatible:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct
    openai:<model>                         the official OpenAI endpoint
    hf:<local dir or hub id>               a transformers causal LM or vision-language model, batched generation
    random-tiny:llama | random-tiny:llava  random-weight smoke-test models

Requests go through the official ``openai`` client (the ``llm`` extra), with its own retries off: tenacity
retries timeouts, connection errors, 429, 5xx and 408/409/425 with exponential backoff (or the server's
Retry-After). Each attempt has a total deadline (``timeout`` seconds, however the server trickles) and a maximum
answer size, and requests in flight per endpoint are bounded process-wide (``visroute.llm.http``: what the client
does not do). A request that still fails, or whose answer is not a usable chat completion (not JSON, an HTML page,
no choices, null or empty content), is returned as a failed result with a one-line ``error``, never raised in the
middle of a batch and never cached.
"""

from __future__ import annotations

import contextvars
import importlib
import json
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit

from visroute.errors import MissingExtraError, ModelLoadError
from visroute.llm.base import ChatRequest, GenerationResult, Generator, TokenLogprobs, openai_messages
from visroute.llm.cache import ResponseCache
from visroute.llm.cancel import cancellable_sleep, check as check_cancelled, generate_kwargs, watch as watch_cancel
from visroute.llm.endpoints import OPENAI_URL
from visroute.llm.http import (ERROR_EXCERPT_BYTES, answer_logprob, content_text, MAX_RESPONSE_BYTES, Attempt, EndpointLimiter, HTTPFailure, one_line,
                               retry_after)
from visroute.registry import Registry

__all__ = ["ChatRequest", "GENERATORS", "GenerationResult", "Generator", "HFCausalLMGenerator", "OpenAICompatibleGenerator",
           "load_generator", "register_generator"]

_RETRY_STATUS = {408, 409, 425, 429}


def _llm_extra(purpose: str):
    """(openai, tenacity), or a one-line MissingExtraError naming the ``llm`` extra."""
    try:
        import openai
        import tenacity
    except ImportError as e:
        raise MissingExtraError("llm", e.name or "openai", purpose) from None
    return openai, tenacity


class OpenAICompatibleGenerator(Generator):
    """Chat completions from an OpenAI-compatible server, ``concurrency`` requests at a time."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 4, backoff_s: float = 0.5,
                 max_response_bytes: int = MAX_RESPONSE_BYTES, logprobs: bool = False, **kw):
        super().__init__(**kw)
        self.logprobs = bool(logprobs)  # ask for token log-probabilities: the answer's confidence (not in the cache key)
        openai, self._tenacity = _llm_extra(f"the endpoint {base_url}")
        self._openai = openai
        self._httpx = _http_library(openai)
        self.base_url = base_url
        self.model = model
        self.spec = f"openai-compatible:{base_url}#{model}"
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        self.max_response_bytes = max_response_bytes
        self._current = threading.local()  # the attempt this thread is making, for the response hook
        # the hook sees every answer as its headers arrive, before anything reads its body; redirects are failures
        # no keep-alive: every attempt opens its own connection, so the deadline's watchdog sees its socket before the
        # status line arrives (a pooled connection would be invisible until the headers are in)
        limits = self._httpx.Limits(max_connections=max(100, 4 * concurrency), max_keepalive_connections=0)
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request], "response": [self._on_response]},
                                                follow_redirects=False, limits=limits)
        # keys come only from the user's endpoint configuration (visroute.llm.endpoints); retries are tenacity's
        self.client = openai.OpenAI(api_key=api_key or "EMPTY", base_url=base_url, max_retries=0,
                                    timeout=openai.Timeout(timeout), http_client=http_client)
        # identity: a compressed answer could inflate past the size limit within one chunk
        self._headers = {"Accept-Encoding": "identity",
                         **({} if base_url == OPENAI_URL else _only_our_headers(openai, api_key or "EMPTY"))}
        self.limiter = EndpointLimiter.for_endpoint(base_url, concurrency)

    def _on_request(self, request) -> None:
        """Hand the attempt's deadline to httpcore's trace hook, which reports the socket once it is connected."""
        att = getattr(self._current, "attempt", None)
        if att is not None:
            request.extensions = {**request.extensions, "trace": att.trace}

    def _on_response(self, response) -> None:
        """Arm the attempt's deadline; turn an error status into an HTTPFailure reading at most a few kB of it."""
        att = getattr(self._current, "attempt", None)
        if att is None:
            return
        att.watch(response)
        status = response.status_code
        if status != 200:
            try:
                head = att.read(response.iter_bytes(), limit=ERROR_EXCERPT_BYTES)
            finally:
                response.close()
            raise HTTPFailure(f"HTTP {status}: {_error_excerpt(head)}", status >= 500 or status in _RETRY_STATUS,
                              retry_after(response.headers.get("retry-after")))

    def _attempt(self, body: dict) -> GenerationResult:
        with self.limiter:  # the deadline starts once the request may go, not while it waits for a slot
            att = self._current.attempt = Attempt(self.timeout, self.max_response_bytes)
            release = watch_cancel(att.abort)  # a served request's cancel token shuts the socket down at once
            try:
                with att, self.client.chat.completions.with_streaming_response.create(
                        **body, extra_headers=self._headers) as resp:
                    data = att.read(resp.iter_bytes(), resp.headers.get("content-length"))
                    ctype = resp.headers.get("content-type", "")
            except HTTPFailure:
                raise
            except (self._openai.OpenAIError, self._httpx.HTTPError, OSError) as e:
                raise self._failure(e, att) from e
            finally:
                self._current.attempt = None
                release()  # cancelled: raises Cancelled instead (never retried, never an error sample)
        text, n_in, n_out, logprob = parse_chat_completion(data, ctype)
        return GenerationResult(text, n_in, n_out, mean_logprob=logprob)

    def _failure(self, e: Exception, att: Attempt) -> HTTPFailure:
        """One line for what the client or the connection raised."""
        openai, httpx = self._openai, self._httpx
        cause = e.__cause__ if isinstance(e, openai.APIConnectionError) and e.__cause__ is not None else e
        if att.fired.is_set() or isinstance(cause, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError)):
            return att.timed_out()
        if isinstance(cause, (httpx.RemoteProtocolError, httpx.ReadError, ConnectionResetError, BrokenPipeError)):
            return HTTPFailure(f"the server closed the connection ({one_line(cause) or type(cause).__name__})", True)
        if isinstance(e, openai.APIStatusError):
            s = e.status_code
            return HTTPFailure(f"HTTP {s}: {one_line(e.message)}", s >= 500 or s in _RETRY_STATUS)
        if isinstance(e, openai.APIConnectionError) or isinstance(cause, (httpx.TransportError, OSError)):
            while cause.__cause__ is not None or cause.__context__ is not None:  # the OSError under httpcore's
                if isinstance(cause, OSError) and cause.strerror:
                    break
                cause = cause.__cause__ or cause.__context__
            what = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
            url = urlsplit(self.base_url)
            port = url.port or (443 if url.scheme == "https" else 80)
            return HTTPFailure(f"cannot talk to {url.hostname}:{port} ({one_line(what)})", True)
        return HTTPFailure(f"request failed: {one_line(e) or type(e).__name__}", False)

    def _wait(self, state) -> float:
        """Exponential backoff, or the server's Retry-After when longer; 30 s at most."""
        expo = self._tenacity.wait_exponential(multiplier=self.backoff_s, max=30.0)(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        return min(30.0, max(expo, getattr(exc, "retry_after", None) or 0.0))

    def _one(self, req: ChatRequest) -> GenerationResult:
        t0 = time.perf_counter()
        try:
            body = {"model": self.model, "messages": openai_messages(req, for_key=False), **self.params,
                    **({"logprobs": True} if self.logprobs else {})}
        except Exception as e:  # an image that cannot be encoded fails its own request
            return GenerationResult("", error=f"request not built: {type(e).__name__}: {e}", attempts=0)
        t = self._tenacity  # a backoff ends at once when a served request is cancelled (cancellable_sleep)
        retrying = t.Retrying(stop=t.stop_after_attempt(self.max_retries + 1), wait=self._wait, reraise=True,
                              sleep=cancellable_sleep,
                              retry=t.retry_if_exception(lambda e: isinstance(e, HTTPFailure) and e.retryable))
        try:
            res = retrying(self._attempt, body)
        except HTTPFailure as failure:
            attempts = retrying.statistics.get("attempt_number", 1)
            reason = f"gave up after {attempts} attempts: {failure.reason}" if failure.retryable and attempts > 1 \
                else failure.reason
            return GenerationResult("", latency_s=time.perf_counter() - t0, attempts=attempts, error=reason)
        res.latency_s, res.attempts = time.perf_counter() - t0, retrying.statistics.get("attempt_number", 1)
        return res

    def _iter_uncached(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, GenerationResult]]:
        """Results as they complete, so each answer is cached the moment it is paid for."""
        if self.concurrency <= 1 or len(requests) <= 1:
            for i, r in enumerate(requests):
                yield i, self._one(r)
            return
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures = {pool.submit(contextvars.copy_context().run, self._one, r): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()


def _http_library(openai):
    """The httpx the openai client is built on (httpx2 from openai 3 on), for the errors a body read raises."""
    base = next(c for c in openai.DefaultHttpxClient.__mro__[1:] if not c.__module__.startswith("openai"))
    return importlib.import_module(base.__module__.partition(".")[0])


def _only_our_headers(openai, api_key: str) -> dict:
    """The openai client adds the user's OpenAI account settings from the environment (OPENAI_ORG_ID,
    OPENAI_PROJECT_ID, OPENAI_CUSTOM_HEADERS, which may hold an Authorization) to every request; like the OpenAI
    key, they go to api.openai.com only. Other endpoints get these headers removed and their own key."""
    names = {"OpenAI-Organization", "OpenAI-Project"}
    names |= {line.partition(":")[0].strip() for line in os.environ.get("OPENAI_CUSTOM_HEADERS", "").splitlines()
              if ":" in line}
    headers: dict = {n: openai.Omit() for n in names if n}
    headers["Authorization"] = f"Bearer {api_key}"
    return headers


def parse_chat_completion(body: bytes, content_type: str = "") -> tuple[str, int | None, int | None, float | None]:
    """(text, prompt tokens, completion tokens, mean token log-probability or None) of a chat completion;
    HTTPFailure (not retried) when the answer is not one, with a one-line reason."""
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
    content = content_text(msg.get("content"))  # content parts: their text ones
    if content is None:
        finish = choices[0].get("finish_reason")
        raise HTTPFailure("invalid answer: the message content is null" + (f" (finish_reason {finish})" if finish else ""),
                          False)
    if not isinstance(content, str):
        raise HTTPFailure(f"invalid answer: the message content is a {type(content).__name__}, not text", False)
    if not content.strip():
        raise HTTPFailure("invalid answer: the message content is empty", False)
    usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else {}
    return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), answer_logprob(choices[0])


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
        except (OSError, ValueError, pickle.UnpicklingError) as e:  # a refused pickle too: one line
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
        from transformers import LogitsProcessorList

        out = []
        for s in range(0, len(requests), self.batch_size):
            chunk = requests[s : s + self.batch_size]
            t0 = time.perf_counter()
            enc = self.tokenizer([self._render(r) for r in chunk], return_tensors="pt", padding=True).to(self.device)
            logprobs = TokenLogprobs()
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=self.max_tokens, do_sample=self.temperature > 0,
                                          temperature=self.temperature or None, pad_token_id=self.tokenizer.pad_token_id,
                                          logits_processor=LogitsProcessorList([logprobs]), **generate_kwargs())
            check_cancelled()  # a cancelled request stopped at its next token (generate_kwargs): Cancelled, no answer
            dt = (time.perf_counter() - t0) / len(chunk)
            new = gen[:, enc["input_ids"].shape[1]:]
            means = logprobs.means(new, {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id} - {None})
            for row, ids, lp in zip(enc["attention_mask"], new, means):
                n_out = int((ids != self.tokenizer.pad_token_id).sum())
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                out.append(GenerationResult(text, int(row.sum()), n_out, dt, mean_logprob=lp))
        return out


#: spec backend -> generator loader ``(parsed, cache, kw) -> Generator``; keyed like ``visroute.models.BACKENDS``
GENERATORS: Registry[Callable[..., Generator]] = Registry("generator backend", error=ModelLoadError)


def register_generator(backend: str, loader: Callable[..., Generator], replace: bool = False):
    return GENERATORS.register(backend, loader, replace)


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
    return GENERATORS[parsed.backend](parsed, cache, kw)


def _load_openai_compatible(parsed, cache, kw) -> Generator:
    from visroute.llm.endpoints import resolve_endpoint

    # the URL and its key come from the user's configuration. ``trusted_endpoints``: URLs the user typed; None
    # (a direct call from the user's own code) vouches for the spec's own URL. build_pipeline always passes a
    # tuple, so specs read from grids, records and router bundles are checked against the configuration.
    trusted = kw.get("trusted_endpoints")
    if trusted is None:
        trusted = () if parsed.location.startswith("@") else (parsed.location,)
    base_url, key = resolve_endpoint(parsed.location, tuple(trusted))
    http = {k: v for k, v in kw.items() if k in ("timeout", "max_retries", "concurrency", "backoff_s",
                                                   "max_tokens", "temperature", "max_response_bytes", "logprobs")}
    gen = OpenAICompatibleGenerator(base_url, parsed.model, api_key=key, cache=cache, **http)
    gen.spec = parsed.text  # prices, caches and records name the endpoint as the spec did
    return gen


def _load_hf(parsed, cache, kw, location: str | None = None) -> Generator:
    location = location or parsed.location
    allowed = {k: v for k, v in kw.items() if k in ("max_tokens", "temperature", "device", "batch_size")}
    if "device" in allowed:
        from visroute.models.contrastive import resolve_device

        allowed["device"] = str(resolve_device(allowed["device"]))  # one "auto" rule for every model
    if _is_vision_language(location):
        from visroute.llm.hf_vlm import HFVisionLanguageGenerator

        return HFVisionLanguageGenerator(location, cache=cache, **allowed)
    return HFCausalLMGenerator(location, cache=cache, **allowed)


def _load_random_tiny(parsed, cache, kw) -> Generator:
    from visroute.models.tiny import ensure_random_tiny

    gen = _load_hf(parsed, cache, kw, str(ensure_random_tiny(parsed.location)))
    gen.spec = parsed.text  # results name the smoke-test model, not its cache directory
    return gen


register_generator("openai-compatible", _load_openai_compatible)
register_generator("hf", _load_hf)
register_generator("random-tiny", _load_random_tiny)


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
