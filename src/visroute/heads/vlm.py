"""Task pipelines: three ways to pick a response option, all on the same tasks, all costed.

(a) ``VLMDirectPipeline``   a generative VLM answers with the options in its prompt;
(b) ``VLMThenLLMPipeline``  a VLM describes the image, an LLM reasons over that text and the options;
(c) ``CLIPOptionsPipeline`` a contrastive model scores "a photo of a {option}" for each option.

Each returns one ``TaskPrediction`` per task with the parsed option (None if the answer could not be
mapped to an option: counted wrong, reported by rule), latency, tokens, images and cost. ``predict(tasks,
progress)`` counts each task on ``progress`` (a ``visroute.log.Progress``) as it finishes, failed ones included,
so a long cell of slow calls shows how far it is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from visroute.llm.client import ChatRequest, Generator, GenerationResult
from visroute.log import Progress
from visroute.tasks.costs import PriceTable
from visroute.tasks.model import Task
from visroute.tasks.parse import parse_option
from visroute.tasks.prompts import PromptTemplate, load_prompt


@dataclass
class TaskPrediction:
    task_id: str
    predicted: int | None
    parse_rule: str
    raw_answer: str
    latency_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    cost: float = 0.0
    cached: bool = False
    error: str | None = None
    option_scores: list[float] = field(default_factory=list)
    intermediate: str = ""
    call_cost: float = 0.0  # what the calls cost when not served from the cache (routing uses this)
    #: a generative answer's own confidence: its geometric-mean token probability, where the backend reported token
    #: log-probabilities (local models; endpoints with params ``logprobs: true``); a cascade's signal. None otherwise
    confidence: float | None = None

    def as_row(self) -> dict:
        return asdict(self)


def _call_cost(res: GenerationResult, spec: str, prices: PriceTable, images: int) -> float:
    """What the call costs when not served from the cache; a failed call costs nothing."""
    if not res.ok:
        return 0.0
    return prices.price(spec).cost(res.input_tokens, res.output_tokens, images, res.latency_s)


def _costed(res: GenerationResult, spec: str, prices: PriceTable, images: int) -> float:
    return 0.0 if res.cached else _call_cost(res, spec, prices, images)


def _images_of(task: Task) -> list:
    """A task's images: none for text-only tasks."""
    return [] if task.image is None else [task.image]


class VLMDirectPipeline:
    name = "vlm"

    def __init__(self, vlm: Generator, prompt: str | PromptTemplate = "mcq", prices: PriceTable | None = None,
                 batch: int = 16, spec=None):
        self.spec = spec  # the PipelineSpec this pipeline was built from (None when built by hand)
        self.vlm = vlm
        self.prompt = prompt if isinstance(prompt, PromptTemplate) else load_prompt(prompt)
        self.prices = prices or PriceTable()
        self.batch = batch

    @property
    def models(self) -> list[str]:
        return [self.vlm.spec]

    def predict(self, tasks: Sequence[Task], progress: Progress | None = None) -> list[TaskPrediction]:
        out = []
        for s in range(0, len(tasks), self.batch):
            chunk = tasks[s : s + self.batch]
            results = self.vlm.generate([ChatRequest(self.prompt.render(t), images=_images_of(t)) for t in chunk],
                                        on_result=progress.result if progress is not None else None,
                                        usable=lambda i, text: readable(parse_option(text, chunk[i].options,
                                                                                     lettered=self.prompt.lettered)))
            for t, r in zip(chunk, results):
                idx, rule = parse_option(r.text, t.options, lettered=self.prompt.lettered) if r.ok else (None, "error")
                n_img = len(_images_of(t))
                out.append(TaskPrediction(t.task_id, idx, rule, r.text, r.latency_s, r.input_tokens or 0,
                                          r.output_tokens or 0, n_img, _costed(r, self.vlm.spec, self.prices, n_img),
                                          r.cached, r.error, call_cost=_call_cost(r, self.vlm.spec, self.prices, n_img),
                                          confidence=r.confidence if r.ok else None))
        return out


class VLMThenLLMPipeline:
    name = "vlm+llm"

    def __init__(self, vlm: Generator, llm: Generator, describe_prompt: str | PromptTemplate = "describe",
                 reason_prompt: str | PromptTemplate = "llm-reason", prices: PriceTable | None = None, batch: int = 16,
                 spec=None):
        self.spec = spec
        self.vlm, self.llm = vlm, llm
        self.describe_prompt = describe_prompt if isinstance(describe_prompt, PromptTemplate) else load_prompt(describe_prompt)
        self.reason_prompt = reason_prompt if isinstance(reason_prompt, PromptTemplate) else load_prompt(reason_prompt)
        self.prices = prices or PriceTable()
        self.batch = batch

    @property
    def models(self) -> list[str]:
        return [self.vlm.spec, self.llm.spec]

    def predict(self, tasks: Sequence[Task], progress: Progress | None = None) -> list[TaskPrediction]:
        out = []
        # a task is done when its LLM call finishes, or when its VLM call failed (no LLM call follows)
        vlm_failed = (lambda r: None if r.ok else progress.done(1, 1)) if progress is not None else None
        for s in range(0, len(tasks), self.batch):
            chunk = tasks[s : s + self.batch]
            seen = self.vlm.generate([ChatRequest(self.describe_prompt.render(t), images=_images_of(t)) for t in chunk],
                                     on_result=vlm_failed)
            reqs = [ChatRequest(self.reason_prompt.render(t, description=v.text)) for t, v in zip(chunk, seen)]
            todo = [i for i, v in enumerate(seen) if v.ok]
            lettered = self.reason_prompt.lettered
            reasoned = dict(zip(todo, self.llm.generate(
                [reqs[i] for i in todo], on_result=progress.result if progress is not None else None,
                usable=lambda j, text: readable(parse_reasoned(text, chunk[todo[j]].options, lettered))))) \
                if todo else {}
            for i, (t, v) in enumerate(zip(chunk, seen)):
                r = reasoned.get(i)
                cost = _costed(v, self.vlm.spec, self.prices, 1) + (_costed(r, self.llm.spec, self.prices, 0) if r else 0.0)
                call = _call_cost(v, self.vlm.spec, self.prices, 1) + (_call_cost(r, self.llm.spec, self.prices, 0) if r else 0.0)
                if r is None or not r.ok:
                    out.append(TaskPrediction(t.task_id, None, "error", "", v.latency_s + (r.latency_s if r else 0),
                                              (v.input_tokens or 0), (v.output_tokens or 0), 1, cost, v.cached,
                                              v.error or (r.error if r else None), intermediate=v.text, call_cost=call))
                    continue
                idx, rule = parse_reasoned(r.text, t.options, lettered)
                out.append(TaskPrediction(t.task_id, idx, rule, r.text, v.latency_s + r.latency_s,
                                          (v.input_tokens or 0) + (r.input_tokens or 0),
                                          (v.output_tokens or 0) + (r.output_tokens or 0), 1, cost,
                                          v.cached and r.cached, None, intermediate=v.text, call_cost=call,
                                          confidence=r.confidence))  # the reasoning model's, which picks the option
        return out


def parse_reasoned(text: str, options, lettered: bool) -> tuple[int | None, str]:
    """A reasoning answer's option: its last line first (where the prompt asks for it), else the whole text."""
    final = text.strip().splitlines()[-1] if text.strip() else ""
    idx, rule = parse_option(final, options, lettered=lettered)
    if idx is None and final != text:
        idx, rule = parse_option(text, options, lettered=lettered)
    return idx, rule


def readable(parsed: tuple[int | None, str]) -> bool:
    """An answer worth keeping in the response cache: it names an option, or refuses / hedges in a way the parser
    recognises (a model's real answer); only text the parser could not read at all is asked again next run."""
    return parsed[1] != "unparsable"


class _TaskImages:
    """Item source over task images (paths or PIL images) for the parallel loader."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = tasks

    def __len__(self) -> int:
        return len(self.tasks)

    def item_id(self, i: int) -> str:
        return self.tasks[i].task_id

    def load(self, i: int, draft_size=None):
        from visroute.data.images import load_image, to_rgb

        im = self.tasks[i].image
        if im is None:
            from visroute.data.images import ImageDecodeError

            raise ImageDecodeError("text-only task: a contrastive model needs an image")
        return load_image(im, draft_size) if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__") else to_rgb(im)


class CLIPOptionsPipeline:
    """Zero-shot over each task's own options with a contrastive model; no text generation, no parsing."""

    name = "clip-options"

    def __init__(self, model, templates: Sequence[str] = ("a photo of a {c}.",), prices: PriceTable | None = None,
                 batch_size: int = 64, num_workers: int | None = 0, decode: str = "exact"):
        self.model = model
        self.decode = decode
        self.templates = list(templates)
        self.prices = prices or PriceTable()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def models(self) -> list[str]:
        return [self.model.spec]

    def _option_embeddings(self, options: Sequence[str]) -> torch.Tensor:
        new = [o for o in dict.fromkeys(options) if o not in self._text_cache]
        if new:
            from visroute.heads.zeroshot import class_embeddings_from_prompts, fill_templates

            emb = class_embeddings_from_prompts(self.model.encode_texts(fill_templates(new, self.templates)), len(new))
            self._text_cache.update(zip(new, emb))
        return torch.stack([self._text_cache[o] for o in options])

    def predict(self, tasks: Sequence[Task], progress: Progress | None = None) -> list[TaskPrediction]:
        from visroute.features.encode import encode_batches

        self._option_embeddings([o for t in tasks for o in t.options])
        preds: dict[int, TaskPrediction] = {}
        price = self.prices.price(self.model.spec)
        t0 = time.perf_counter()
        for idx, emb, skipped in encode_batches(self.model, _TaskImages(tasks), None, self.batch_size, self.num_workers,
                                                self.decode):
            per = (time.perf_counter() - t0) / max(1, len(idx))  # decode + forward of this batch, per image
            t0 = time.perf_counter()
            for row, i in enumerate(idx):
                t = tasks[i]
                probs = self.model.probabilities(self.model.logits(emb[row : row + 1], self._option_embeddings(t.options)))[0]
                best = int(probs.argmax())
                c = price.cost(0, 0, 1, per)
                preds[i] = TaskPrediction(t.task_id, best, "scores", t.options[best], per, 0, 0, 1, c, False, None,
                                          [float(p) for p in probs], call_cost=c)
            for sk in skipped:
                preds[sk.index] = TaskPrediction(tasks[sk.index].task_id, None, "error", "", error=sk.reason)
            if progress is not None:
                progress.done(len(idx) + len(skipped), len(skipped))
        return [preds[i] for i in range(len(tasks))]


def accuracy(tasks: Sequence[Task], preds: Sequence[TaskPrediction]) -> float:
    ok = [p.predicted is not None and p.predicted == t.answer for t, p in zip(tasks, preds)]
    return float(np.mean(ok)) if ok else float("nan")
