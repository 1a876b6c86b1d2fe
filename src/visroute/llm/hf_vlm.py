"""Local transformers image-text-to-text models (LLaVA, Qwen2-VL / Qwen2.5-VL, PaliGemma, BLIP-2, ...).

Loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText`` (falling back to ``AutoModelForMultimodalLM``
and the older ``AutoModelForVision2Seq`` where a checkpoint is only registered there). Generation is
batched with left padding; requests are grouped by how many images they carry, so a batch handed to the
processor is uniform (text-only requests go through without pixel values).

Prompts use the processor's chat template, with one ``{"type": "image"}`` part per image followed by
the text (and a system message when given). A processor with no chat template gets a plain prompt:
as is for processors that insert their image tokens themselves (BLIP-2, InstructBLIP, PaliGemma),
else one ``<image>`` placeholder (the processor's image token) per image, a newline, then the text.

As in the HTTP backend, a request that cannot be served (an image that does not decode, a model that
rejects the inputs) comes back as a failed result (``error`` set) rather than raising, so the rest of
the work is kept.
"""

from __future__ import annotations

import pickle
import os
import time
from collections.abc import Sequence
from typing import Any

from visroute.errors import ModelLoadError
from visroute.llm.base import ChatRequest, GenerationResult, Generator, TokenLogprobs
from visroute.llm.cancel import check as check_cancelled
from visroute.llm.cancel import generate_kwargs
from visroute.log import get_logger

log = get_logger(__name__)

# processors that put the image placeholder tokens into the prompt themselves
_SELF_INSERTING = {"Blip2Processor", "InstructBlipProcessor", "InstructBlipVideoProcessor", "PaliGemmaProcessor"}


def _auto_model_classes() -> list[Any]:
    import transformers

    names = ["AutoModelForImageTextToText", "AutoModelForMultimodalLM", "AutoModelForVision2Seq"]
    return [getattr(transformers, n) for n in names if hasattr(transformers, n)]


class HFVisionLanguageGenerator(Generator):
    """A local transformers vision-language model; ``spec`` is ``hf:<location>``."""

    def __init__(self, location: str, device: str = "cpu", batch_size: int = 4, cache=None, max_tokens: int = 64,
                 temperature: float = 0.0):
        super().__init__(cache=cache, max_tokens=max_tokens, temperature=temperature)
        import torch
        from transformers import AutoProcessor

        self.location = str(location)
        self.spec = f"hf:{self.location}"
        self._system_folded = False
        self.device = device
        self.batch_size = max(1, int(batch_size))
        from visroute.models.hf import check_hf_location

        check_hf_location(self.location)  # a missing directory, or no network: one line at once
        try:
            self.processor = AutoProcessor.from_pretrained(self.location)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ModelLoadError(f"could not load a processor for vision-language model '{self.location}' "
                                 f"({_first_line(e)}); point at a local model directory saved with save_pretrained") from e
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None or not hasattr(self.processor, "image_processor"):
            raise ModelLoadError(f"'{self.location}' has no image+text processor (got {type(self.processor).__name__}); "
                                 "it is not a vision-language model")
        dtype = torch.float32 if str(device) == "cpu" else "auto"
        errors = []
        self.model = None
        for auto in _auto_model_classes():
            try:
                self.model = auto.from_pretrained(self.location, dtype=dtype)
                break
            except ValueError as e:  # checkpoint not registered for this auto class: try the next one
                errors.append(f"{auto.__name__}: {_first_line(e)}")
            except (OSError, pickle.UnpicklingError) as e:  # a refused pickle too: one line
                raise ModelLoadError(f"could not load vision-language model '{self.location}' ({_first_line(e)})") from e
        if self.model is None:
            raise ModelLoadError(f"could not load vision-language model '{self.location}' ({'; '.join(errors)})")
        self.model = self.model.to(device).eval()

        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_token_id = self.tokenizer.pad_token_id
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.has_chat_template = bool(getattr(self.processor, "chat_template", None))

    # ----- prompts -----

    def _render(self, req: ChatRequest, n_images: int) -> str:
        if self.has_chat_template:
            user = {"role": "user", "content": [{"type": "image"} for _ in range(n_images)]
                    + [{"type": "text", "text": req.prompt}]}
            msgs = [user]
            if req.system:
                msgs = [{"role": "system", "content": [{"type": "text", "text": req.system}]}, user]
            try:
                return self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            except Exception as e:  # jinja raises TemplateError or anything the template itself raises
                if not req.system:
                    raise
                # some templates reject a system turn: fold it into the user turn instead, and say so once
                if not self._system_folded:
                    self._system_folded = True
                    log.warning("%s: the chat template rejects a system turn (%s: %s); the system prompt is "
                                "prepended to the user turn instead", self.spec, type(e).__name__, _first_line(e))
                user["content"][-1]["text"] = f"{req.system}\n\n{req.prompt}"
                return self.processor.apply_chat_template([user], tokenize=False, add_generation_prompt=True)
        text = (req.system + "\n\n" if req.system else "") + req.prompt
        token = getattr(self.processor, "image_token", None)
        token = getattr(token, "content", token)  # an AddedToken in some processors
        if n_images and token and type(self.processor).__name__ not in _SELF_INSERTING:
            text = f"{token}\n" * n_images + text
        return text

    # ----- generation -----

    def _load_images(self, req: ChatRequest) -> list[Any]:
        from PIL import Image

        from visroute.data.images import load_image, to_rgb

        out = []
        for im in req.images:
            if isinstance(im, (str, os.PathLike)):
                out.append(load_image(im))
            elif isinstance(im, Image.Image):
                out.append(to_rgb(im))
            else:
                raise TypeError(f"unsupported image type {type(im).__name__} (give a file path or a PIL image)")
        return out

    def _count_output(self, ids: list[int]) -> int:
        """Generated tokens up to and including the first EOS, pads not counted."""
        n = 0
        for t in ids:
            if t in self.eos_token_ids:
                return n + 1
            if t != self.pad_token_id:
                n += 1
        return n

    def _run_batch(self, reqs: list[ChatRequest], images: list[list[Any]]) -> list[GenerationResult]:
        import torch

        t0 = time.perf_counter()
        texts = [self._render(r, len(ims)) for r, ims in zip(reqs, images)]
        n_img = len(images[0])
        kw: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True, "padding_side": "left"}
        if n_img == 1:
            kw["images"] = [ims[0] for ims in images]
        elif n_img > 1:
            kw["images"] = images
        enc = self.processor(**kw)
        enc = enc.to(self.device)
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        sample = self.temperature > 0
        gen_kw: dict[str, Any] = {"max_new_tokens": self.max_tokens, "do_sample": sample,
                                  "pad_token_id": self.pad_token_id}
        if sample:
            gen_kw["temperature"] = self.temperature
        else:  # greedy: clear sampling defaults a checkpoint's generation_config may carry
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        from transformers import LogitsProcessorList

        logprobs = TokenLogprobs()
        with torch.inference_mode():  # a cancelled request (a served one answered early) ends at its next token
            gen = self.model.generate(**enc, **gen_kw, logits_processor=LogitsProcessorList([logprobs]),
                                      **generate_kwargs())
        check_cancelled()  # Cancelled (not an Exception: the batch loop does not record it as a failed answer)
        dt = (time.perf_counter() - t0) / len(reqs)
        input_ids = enc["input_ids"]
        prompt_len = input_ids.shape[1]
        # decoder-only models return prompt + continuation; encoder-decoder ones only the decoder side
        if gen.shape[1] >= prompt_len and torch.equal(gen[:, :prompt_len].to(input_ids.device), input_ids):
            new = gen[:, prompt_len:]
        else:
            new = gen
            start = getattr(self.model.generation_config, "decoder_start_token_id", None)
            if getattr(self.model.config, "is_encoder_decoder", False) and start is not None and new.shape[1] \
                    and bool((new[:, 0] == start).all()):
                new = new[:, 1:]
        mask = enc.get("attention_mask")
        means = logprobs.means(new, self.eos_token_ids | {self.pad_token_id})
        out = []
        for i, ids in enumerate(new.tolist()):
            n_in = int(mask[i].sum()) if mask is not None else int((input_ids[i] != self.pad_token_id).sum())
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(GenerationResult(text, n_in, self._count_output(ids), dt, mean_logprob=means[i]))
        return out

    def _generate_uncached(self, requests: Sequence[ChatRequest]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[int, list[tuple[int, list[Any]]]] = {}
        for i, req in enumerate(requests):
            try:
                ims = self._load_images(req)
            except Exception as e:  # a bad file fails its own request only; Generator.generate counts and warns
                log.debug("%s: request %d: image not loaded", self.spec, i, exc_info=True)
                results[i] = GenerationResult("", error=f"image: {type(e).__name__}: {e}")
                continue
            groups.setdefault(len(ims), []).append((i, ims))
        for members in groups.values():
            for s in range(0, len(members), self.batch_size):
                chunk = members[s : s + self.batch_size]
                idx = [i for i, _ in chunk]
                t0 = time.perf_counter()
                try:
                    res = self._run_batch([requests[i] for i in idx], [ims for _, ims in chunk])
                except Exception as e:  # recorded, not raised: the other batches are kept; counted by generate()
                    log.debug("%s: a batch of %d request(s) failed", self.spec, len(idx), exc_info=True)
                    dt = (time.perf_counter() - t0) / len(idx)
                    res = [GenerationResult("", latency_s=dt, error=f"{type(e).__name__}: {_first_line(e)}")
                           for _ in idx]
                for i, r in zip(idx, res):
                    results[i] = r
        return results  # type: ignore[return-value]


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
