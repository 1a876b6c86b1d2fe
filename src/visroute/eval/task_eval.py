"""Task-pipeline evaluation over several datasets (``visroute eval --head vlm|vlm+llm|clip-options``).

A task file (CSV/JSONL with a ``question`` column) is read as multiple-choice tasks; any other dataset spec is a
classification dataset turned into tasks whose options are its class names, or the top-k of a CLIP pre-filter.
One dataset's failure is counted and reported, and the others still run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from visroute.errors import VisrouteError

def task_pipeline_spec(head: str, models: Sequence[str], vlm: str | None, llm: str | None, prompt: str | None,
                       prices: Path | None, max_tokens: int, device: str, dtype: str):
    """The pipeline spec ``visroute eval --head vlm|vlm+llm|clip-options`` describes (``prompt``: the VLM's
    question prompt for vlm, the LLM's reason prompt for vlm+llm)."""
    from visroute.pipeline.heads import HEADS, task_heads
    from visroute.pipeline.spec import PipelineSpec
    from visroute.tasks.costs import PriceTable

    if head not in task_heads():
        raise VisrouteError(f"unknown task head '{head}' (one of {', '.join(task_heads())})")
    entry = HEADS[head]
    given = {"model": models[0] if models else None, "vlm": vlm, "llm": llm}
    missing = [f"--{f}" for f in entry.models if not given[f]]
    if missing:
        raise VisrouteError(f"head '{head}' needs {' and '.join(f'--{f}' for f in entry.models)}"
                            + (" (a contrastive model)" if entry.family == "contrastive" else ""))
    kw = {entry.prompts[-1]: prompt} if prompt and entry.prompts else {}  # the last prompt asks the question
    return PipelineSpec(head=head, max_tokens=max_tokens, prices=PriceTable.load(prices).table if prices else None,
                        device=device, dtype=dtype, **{f: given[f] for f in entry.models}, **kw)


def has_question_column(path: str) -> bool:
    """Whether a CSV/JSONL file's first line names a ``question`` field: a task file, not an image manifest."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except OSError:
        return False
    return "question" in first


def load_task_dataset(spec: str, clip=None, options_top_k: int | None = None) -> tuple[list, list[dict], str]:
    """(tasks, skipped rows, dataset name) for a task file or a classification dataset spec."""
    from visroute.data.datasets import load_dataset
    from visroute.tasks.model import load_tasks, tasks_from_classification

    base = spec.partition("#")[0]
    if base.endswith((".jsonl", ".csv")) and has_question_column(base):
        tasks, skipped = load_tasks(spec)
        return tasks, skipped, Path(base).stem
    ds = load_dataset(spec)
    top = None
    if options_top_k:
        if clip is None:
            raise VisrouteError("--options-top-k needs --model for the CLIP pre-filter")
        top = clip_prefilter(clip, ds, options_top_k)
    return tasks_from_classification(ds, top), [], ds.name


def clip_prefilter(clip, ds, k: int):
    """Indices of each image's k most probable classes under zero-shot CLIP (cached features)."""
    import numpy as np

    from visroute.features.cache import FeatureCache
    from visroute.heads.zeroshot import ZeroShotClassifier

    idx, X = FeatureCache().encode(clip, ds).load()
    top = np.zeros((len(ds), k), dtype=np.int64)
    top[idx] = ZeroShotClassifier(clip).fit(ds.classnames).predict_topk(X, k)[0]
    return top


def evaluate_task_datasets(head: str, datasets: Sequence[str], models: Sequence[str] = (), vlm: str | None = None,
                           llm: str | None = None, prompt: str | None = None, options_top_k: int | None = None,
                           prices: Path | None = None, max_tokens: int = 64, timeout: float = 120.0, retries: int = 4,
                           concurrency: int = 4, output: Path = Path("results"), device: str = "auto",
                           dtype: str = "auto", progress: bool = False) -> tuple[list[dict], list[str]]:
    """Evaluate one task pipeline on each dataset: (result documents, one message per dataset that failed).

    A pipeline that cannot be built fails every dataset at once, with a single message. ``progress``: a bar per
    dataset over its tasks (``visroute.eval.tasks_run.evaluate_tasks``).
    """
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.pipeline.build import Runtime, build_pipeline, load_contrastive, typed_endpoints
    from visroute.pipeline.spec import PipelineSpec

    try:
        runtime = Runtime(typed_endpoints(vlm, llm), timeout=timeout, retries=retries, concurrency=concurrency)
        spec = task_pipeline_spec(head, models, vlm, llm, prompt, prices, max_tokens, device, dtype)
        clip = load_contrastive(PipelineSpec(model=models[0], device=device, dtype=dtype), runtime) if models else None
        pipeline = build_pipeline(spec, runtime, model=clip if spec.entry.family == "contrastive" else None)
    except VisrouteError as e:
        return [], [str(e)]
    random = bool(clip is not None and clip.is_random) or any("random-tiny" in m for m in pipeline.models)
    rows, errors = [], []
    for spec in datasets:
        try:
            tasks, skipped, name = load_task_dataset(spec, clip, options_top_k)
            rows.append(evaluate_tasks(pipeline, tasks, name, output, prompt or "default", skipped, random,
                                       dataset_spec=spec, progress=progress))
        except VisrouteError as e:
            errors.append(f"{head} on {spec}: {e}")
    return rows, errors
