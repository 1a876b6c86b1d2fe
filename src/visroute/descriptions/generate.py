"""Writing class descriptions with an LLM: DCLIP-style descriptors, CuPL-style sentences, and contrastive
descriptors that say what separates a class from its most confusable neighbours.

Every answer is parsed; answers with no usable item are counted and listed in the report, never dropped
silently. Responses go through the SQLite response cache, so an interrupted run resumes for free.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from visroute.errors import InputError
from visroute.heads.description_sets import DescriptionSet
from visroute.llm.client import ChatRequest, Generator

STYLES = ("dclip", "cupl", "contrastive")

DCLIP_PROMPT = (
    "List the visual features that help recognise a {c} in a photograph. "
    "Answer only with a list, one short phrase per line, each line starting with '- '."
)
CUPL_PROMPTS = (
    "Describe in one sentence what a {c} looks like.",
    "How can you identify a {c} in a photo? Answer in one sentence.",
    "Describe a photo of a {c} in one sentence.",
)
CONTRASTIVE_PROMPT = (
    "Which visual features distinguish a {c} from a {others}? "
    "Answer only with a list of short phrases describing the {c}, one per line, each starting with '- '."
)

_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*\S)\s*$")


def parse_list_answer(text: str, max_words: int = 25) -> list[str]:
    """Items of a bulleted / numbered list; prose lines and overlong items are not items."""
    items = []
    for line in (text or "").splitlines():
        m = _ITEM.match(line)
        if not m:
            continue
        item = m.group(1).strip().strip('"').rstrip(".").strip()
        if item and len(item.split()) <= max_words:
            items.append(item)
    return list(dict.fromkeys(items))


def parse_sentence_answer(text: str, max_words: int = 60) -> list[str]:
    """One descriptive sentence (the first), or nothing if the answer is empty or not a sentence."""
    text = (text or "").strip().strip('"').strip()
    if not text:
        return []
    first = re.split(r"(?<=[.!?])\s+", text)[0].strip()
    words = first.split()
    if len(words) < 3 or len(words) > max_words or not re.search(r"[A-Za-z]{3,}", first):
        return []
    return [first if first.endswith((".", "!", "?")) else first + "."]


def text_neighbours(embeddings: np.ndarray, n: int) -> list[list[int]]:
    """For each class, the ``n`` other classes whose (normalised) text embeddings are closest."""
    sims = embeddings @ embeddings.T
    np.fill_diagonal(sims, -np.inf)
    return [[int(j) for j in np.argsort(-row, kind="stable")[:n]] for row in sims]


def confusion_neighbours(confusion: np.ndarray, n: int) -> list[list[int]]:
    """For each class, the ``n`` classes its images are most often mistaken for (ties: closer index first)."""
    c = np.asarray(confusion, dtype=float).copy()
    np.fill_diagonal(c, -np.inf)
    return [[int(j) for j in np.argsort(-row, kind="stable")[:n]] for row in c]


@dataclass
class GenerationReport:
    requests: int = 0
    cached: int = 0
    failed: list[dict] = field(default_factory=list)
    unparsable: list[dict] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "cached": self.cached, "n_failed": len(self.failed),
                "n_unparsable": len(self.unparsable), "failed": self.failed, "unparsable": self.unparsable,
                "empty_classes": self.empty_classes}


def build_requests(classnames: Sequence[str], style: str, neighbours: Sequence[Sequence[int]] | None = None
                   ) -> list[tuple[int, ChatRequest]]:
    """(class index, request) pairs for a style."""
    if style not in STYLES:
        raise InputError(f"unknown style '{style}' ({', '.join(STYLES)})")
    out = []
    for k, c in enumerate(classnames):
        if style == "dclip":
            out.append((k, ChatRequest(DCLIP_PROMPT.replace("{c}", c))))
        elif style == "cupl":
            out += [(k, ChatRequest(p.replace("{c}", c))) for p in CUPL_PROMPTS]
        else:
            if neighbours is None:
                raise ValueError("the contrastive style needs neighbours (confusion matrix or text embeddings)")
            others = [classnames[j] for j in neighbours[k]]
            joined = ", a ".join(others[:-1]) + (f", or a {others[-1]}" if len(others) > 1 else others[0])
            out.append((k, ChatRequest(CONTRASTIVE_PROMPT.replace("{c}", c).replace("{others}", joined))))
    return out


def generate_descriptions(generator: Generator, classnames: Sequence[str], style: str = "dclip",
                          neighbours: Sequence[Sequence[int]] | None = None, batch: int = 32,
                          progress: bool = False) -> tuple[DescriptionSet, GenerationReport]:
    reqs = build_requests(classnames, style, neighbours)
    descs: list[list[str]] = [[] for _ in classnames]
    report = GenerationReport(requests=len(reqs))
    parse = parse_sentence_answer if style == "cupl" else parse_list_answer
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(reqs), unit="req", desc=f"describe ({style})", disable=None)  # quiet off the terminal
    for s in range(0, len(reqs), batch):
        chunk = reqs[s : s + batch]
        results = generator.generate([r for _, r in chunk])
        for (k, req), res in zip(chunk, results):
            report.cached += int(res.cached)
            if not res.ok:
                report.failed.append({"class": classnames[k], "prompt": req.prompt, "error": res.error})
                continue
            items = parse(res.text)
            if not items:
                report.unparsable.append({"class": classnames[k], "prompt": req.prompt, "answer": res.text[:500]})
            descs[k] += [i for i in items if i not in descs[k]]
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    report.empty_classes = [c for c, d in zip(classnames, descs) if not d]
    kind = "sentence" if style == "cupl" else "descriptor"
    prompt = " | ".join(CUPL_PROMPTS) if style == "cupl" else (DCLIP_PROMPT if style == "dclip" else CONTRASTIVE_PROMPT)
    prov = {"generator": generator.spec, "style": style, "prompt": prompt, "source": "visroute describe"}
    return DescriptionSet(list(classnames), descs, kind, prov), report


def describe_classes(classes: str, llm: str, output, style: str = "dclip", neighbours: int = 3, confusion=None,
                     model: str | None = None, timeout: float = 60.0, retries: int = 4, concurrency: int = 4,
                     max_tokens: int = 256, progress: bool = False, engine=None) -> tuple[DescriptionSet, GenerationReport]:
    """``visroute describe``: read class names, find each class's confusable neighbours (contrastive style: from a
    result file's confusion matrix, else from a contrastive model's text embeddings), generate, save to ``output``.
    ``engine`` (``visroute.engine``, e.g. Ray): where the requests are sent from, under its per-endpoint limit."""
    import json

    from visroute.data.text import parse_labels
    from visroute.heads.description_sets import save_descriptions
    from visroute.errors import VisrouteError
    from visroute.pipeline.build import Runtime, load_contrastive, typed_endpoints
    from visroute.pipeline.spec import PipelineSpec

    runtime = Runtime(typed_endpoints(llm), timeout=timeout, retries=retries, concurrency=concurrency)
    classnames, _ = parse_labels(labels_file=classes)
    near = None
    if style == "contrastive":
        n = min(neighbours, len(classnames) - 1)
        if n < 1:
            raise VisrouteError("the contrastive style needs at least two classes")
        if confusion is not None:
            cm = json.loads(confusion.read_text()).get("visroute", {}).get("confusion_matrix")
            if cm is None or len(cm) != len(classnames):
                raise VisrouteError(f"{confusion} has no confusion matrix for {len(classnames)} classes")
            near = confusion_neighbours(cm, n)
        else:
            clip = load_contrastive(PipelineSpec(model=model or "random-tiny", device="cpu"), runtime)
            emb = clip.encode_texts([f"a photo of a {c}." for c in classnames])
            near = text_neighbours(emb.numpy(), n)
    # the same loader as build_pipeline's, so a describe LLM is configured exactly like a pipeline's LLM
    gen_spec = PipelineSpec(head="vlm", vlm=llm, max_tokens=max_tokens)
    if engine is None:
        from visroute.engine import default_engine

        engine = default_engine()
    generator = engine.generator(llm, gen_spec, runtime)
    dset, report = generate_descriptions(generator, classnames, style, near, progress=progress)
    if report.requests and len(report.failed) == report.requests:  # nothing to save: keep any earlier file as it is
        raise VisrouteError(f"all {report.requests} request(s) to {llm} failed (first: {report.failed[0]['error']}); "
                            f"{output} not written")
    try:
        save_descriptions(output, dset, report=report.as_dict(), neighbours=near)
    except OSError as e:  # disk full, permissions: the answers saved in the response cache make a re-run free
        cache = getattr(generator, "cache", None)
        note = "; the answers are cached, so a re-run costs no requests" if cache is not None and not cache.unsaved \
            else ""
        raise VisrouteError(f"cannot write {output} ({e.strerror or e}){note}") from None
    return dset, report
