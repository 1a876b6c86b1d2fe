"""Generation backends: OpenAI-compatible HTTP servers (OpenAI, vLLM, Ollama, llama.cpp, `transformers serve`)
via the ``openai`` client, and local transformers causal LMs.

Specs follow the one grammar of ``visroute.models.spec``; the generative forms are::

    openai-compatible:<base_url>#<model>   e.g. openai-compatible:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct
    openai:<model>                         the official OpenAI endpoint
    hf:<local dir or hub id>               a transformers causal LM or vision-language model, batched generation
    random-tiny:llama | random-tiny:llava  random-weight smoke-test models

HTTP requests are retried with exponential backoff (tenacity) on timeouts, connection errors, 429 and
5xx; a request that still fails is returned as a failed result (``error`` set), never raised in the
middle of a batch, so the rest of the work is kept. Concurrency is bounded by a thread pool.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from visroute.errors import MissingExtraError, ModelLoadError
from visroute.llm.base import ChatRequest, GenerationResult, Generator, openai_messages
from visroute.llm.cache import ResponseCache

__all__ = ["ChatRequest", "GenerationResult", "Generator", "HFCausalLMGenerator", "OpenAICompatibleGenerator",
           "load_generator"]


class OpenAICompatibleGenerator(Generator):
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 4, backoff_s: float = 0.5, **kw):
        super().__init__(**kw)
        try:
            import openai
            import tenacity  # noqa: F401  (retries in _one; checked here so a missing extra fails before any request)
        except ImportError as e:
            raise MissingExtraError("llm", e.name or "openai", f"the endpoint {base_url}") from e
        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.spec = f"openai-compatible:{base_url}#{model}"
        self.timeout = timeout
        self.max_retries = max_retries
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        key = api_key or "EMPTY"  # keys come only from the user's endpoint configuration (visroute.llm.endpoints)
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
                        model=self.model, messages=openai_messages(req, for_key=False), **self.params)
            text = (resp.choices[0].message.content or "") if resp.choices else ""
            usage = getattr(resp, "usage", None)
            return GenerationResult(text, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None),
                                    time.perf_counter() - t0, attempts=attempts)
        except RetryError as e:
            last = e.last_attempt.exception()
            return GenerationResult("", latency_s=time.perf_counter() - t0, attempts=attempts,
                                    error=f"gave up after {attempts} attempts: {type(last).__name__}: {last}")
        except Exception as e:  # 4xx and other non-retryable errors: recorded, not raised; generate() counts and warns
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
                                                       "max_tokens", "temperature")}
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
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the config of '{location}' ({str(e).splitlines()[0]}); point at a local "
                             "model directory with hf:/path/to/dir") from e
    return hasattr(cfg, "vision_config")
