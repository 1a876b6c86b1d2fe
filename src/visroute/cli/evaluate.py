"""``visroute eval`` (models x datasets with one head, or task pipelines) and ``visroute report``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.cli._common import (Actors, BatchSize, Decode, Device, Dtype, EndpointConcurrency, EngineName, NumGpus, RayAddress,
                                  Workers, error, exit_code, make_engine, options_from, quiet_libraries, warn)
from visroute.pipeline.heads import classify_heads, task_heads

Opt = typer.Option


@dataclass
class EvalArgs:
    """Every ``visroute eval`` flag. Groups: what to run; task pipelines; prompts and descriptions; random controls
    and disclip; output and execution."""

    dataset: Annotated[list[str], Opt("--dataset", "-d", help="Dataset or task-file spec; repeat for several.")]
    model: Annotated[Optional[list[str]], Opt("--model", "-m", help="Contrastive model spec; repeat for several.")] = None
    head: Annotated[str, Opt(help=f"{', '.join(classify_heads())}; task pipelines: {', '.join(task_heads())}.")] = "zeroshot"
    # task pipelines
    vlm: Annotated[Optional[str], Opt(help="Generative VLM spec (hf:<dir> or openai-compatible:<url>#<model>).")] = None
    llm: Annotated[Optional[str], Opt(help="LLM spec for vlm+llm (hf:<dir> or openai-compatible:<url>#<model>).")] = None
    prompt: Annotated[Optional[str], Opt(help="Prompt template name (mcq, mcq-text, open, ...) or file.")] = None
    options_top_k: Annotated[Optional[int], Opt(help="Classification datasets: options = top-k of a CLIP pre-filter (--model).")] = None
    prices: Annotated[Optional[Path], Opt(help="Price table JSON (per model: tokens, images, seconds).")] = None
    max_tokens: Annotated[int, Opt(min=1, help="Generation length for vlm / llm.")] = 64
    timeout: Annotated[float, Opt(help="Seconds per HTTP request.")] = 120.0
    retries: Annotated[int, Opt(min=0)] = 4
    concurrency: Annotated[int, Opt(min=1, help="Parallel HTTP requests.")] = 4
    # prompts and descriptions
    templates: Annotated[Optional[str], Opt(help="Templates with {c}: .txt, JSON list or FILE.json:KEY.")] = None
    classnames: Annotated[Optional[str], Opt(help="Class names overriding the dataset's (FILE or FILE.json:KEY).")] = None
    descriptions: Annotated[Optional[str], Opt(help="Description file (DCLIP, CuPL, DisCLIP or visroute JSON).")] = None
    fallback_descriptions: Annotated[Optional[str], Opt(help="Descriptions for classes the first file leaves empty.")] = None
    description_style: Annotated[str, Opt(help="dclip ('{c}, which is/has {d}'), photo ('A photo of a {c}, {d}.') or sentence.")] = "dclip"
    # random controls, classname-free and disclip
    repeats: Annotated[int, Opt(min=1, help="Repetitions of the random controls (mean +- std).")] = 5
    seed: Annotated[int, Opt(help="Seed of the random controls.")] = 0
    w_cls: Annotated[float, Opt(help="Class-name weight for classname-free / disclip scoring.")] = 0.0
    w_cls_sweep: Annotated[Optional[str], Opt(help="Comma-separated w_cls values to sweep (classname-free, disclip).")] = None
    selection_dataset: Annotated[Optional[str], Opt(help="Labelled selection split for disclip.")] = None
    n_per_class: Annotated[Optional[int], Opt(help="Selection images per class (default: smallest class).")] = None
    k: Annotated[int, Opt("-k", help="disclip neighbourhood size.")] = 3
    m: Annotated[int, Opt("-M", "--m-descriptions", help="disclip descriptions kept per candidate.")] = 5
    disclip_mode: Annotated[str, Opt(help="classname-free or classname-containing.")] = "classname-free"
    # output and execution
    output: Annotated[Path, Opt("--out", help="Directory for result JSON + Parquet files.")] = Path("results")
    skip_existing: Annotated[bool, Opt(help="Skip runs whose result JSON already exists.")] = False
    batch_size: BatchSize = 64
    workers: Workers = None
    shard_size: Annotated[int, Opt(min=1, help="Images per feature-cache shard (resume granularity).")] = 2048
    decode: Decode = "exact"
    device: Device = "auto"
    dtype: Dtype = "auto"
    progress: Annotated[bool, Opt(help="Progress bars.")] = True
    # engine (contrastive heads: image features on a Ray actor pool; results identical to the local engine)
    engine: EngineName = None
    ray_address: RayAddress = None
    actors: Actors = None
    num_gpus: NumGpus = None
    endpoint_concurrency: EndpointConcurrency = None

    def pipeline_specs(self) -> list:
        """One ``PipelineSpec`` per --model for a contrastive-head run: the head's parameters come from the flags of
        the same name; flag combinations that cannot work are usage errors here, named by their flags, before any
        model loads."""
        from visroute.errors import VisrouteError
        from visroute.pipeline.heads import HEADS
        from visroute.pipeline.spec import PipelineSpec

        try:
            sweep = [float(x) for x in self.w_cls_sweep.split(",") if x.strip()] if self.w_cls_sweep else []
        except ValueError:
            raise VisrouteError(f"--w-cls-sweep must be comma-separated numbers, got {self.w_cls_sweep!r}") from None
        entry = HEADS[self.head]
        if sweep and "mode" in entry.params and self.disclip_mode != "classname-free":
            raise VisrouteError("--w-cls-sweep needs --disclip-mode classname-free (the other mode has no class-name weight)")
        if entry.selection and not self.selection_dataset:
            raise VisrouteError(f"head '{self.head}' needs --selection-dataset (a labelled split, e.g. a train folder)")
        if not self.model:
            raise VisrouteError(f"head '{self.head}' needs --model")
        flags = {"mode": "disclip_mode", "w_cls_sweep": None}  # head parameter -> flag, where the names differ
        params = {p: sweep if p == "w_cls_sweep" else getattr(self, flags.get(p, p), default.default)
                  for p, default in entry.params.items()}
        return [PipelineSpec(head=self.head, model=m, templates=self.templates if entry.templates else None,
                             descriptions=self.descriptions, fallback_descriptions=self.fallback_descriptions,
                             device=self.device, dtype=self.dtype, decode=self.decode,
                             params={k: v for k, v in params.items() if v != []})
                for m in self.model]

    def run_options(self, cache=None):
        """Where results go and how images are read (``visroute.eval.run.RunOptions``)."""
        from visroute.eval.run import RunOptions

        keep = ("output", "classnames", "batch_size", "workers", "shard_size", "skip_existing", "progress")
        return RunOptions(cache=cache, **{name: getattr(self, name) for name in keep})

    def task_arguments(self) -> dict:
        """Keyword arguments of ``evaluate_task_datasets``."""
        names = ("head", "vlm", "llm", "prompt", "options_top_k", "prices", "max_tokens", "timeout", "retries",
                 "concurrency", "output", "device", "dtype", "progress")
        return {"datasets": self.dataset, "models": self.model or [], **{n: getattr(self, n) for n in names}}


@options_from(EvalArgs)
def eval_cmd(args: EvalArgs) -> None:
    """Evaluate models x datasets; image features are cached, so other heads/templates re-encode nothing."""
    from visroute.errors import VisrouteError
    from visroute.eval.report import summary_table, task_table
    from visroute.pipeline.heads import HEADS

    quiet_libraries()
    if HEADS[args.head].kind == "tasks":
        from visroute.eval.task_eval import evaluate_task_datasets

        if (args.engine or "local") != "local":
            raise VisrouteError("--engine ray runs the contrastive heads; run task pipelines on Ray with `grid run`")
        rows, errors = evaluate_task_datasets(**args.task_arguments())
        table = task_table
    else:
        from visroute.eval.batch import evaluate_models

        engine = make_engine(args.engine, args.ray_address, args.actors, args.num_gpus, args.endpoint_concurrency)
        try:
            rows, errors = evaluate_models(args.pipeline_specs(), args.dataset, args.run_options(engine.feature_cache()))
        finally:
            engine.shutdown()
        table = summary_table
    code = _report_rows(rows, errors, table)
    raise typer.Exit(code)


def _report_rows(rows: list[dict], errors: list[str], table) -> int:
    """Print skips, errors, partial failures and the table; the exit code they add up to."""
    from visroute.errors import CallsFailed

    v = [d.get("visroute", {}) for d in rows]
    for x in v:
        for s in x.get("skipped", []):
            warn(f"skipped: {s['id']}: {s['reason']}")
        for s in x.get("skipped_rows", []):
            warn(f"skipped task row {s['row']}: {s['reason']}")
    for message in errors:
        error(message)
    for doc, x in zip(rows, v):
        if x.get("n_errors"):  # partial failure: counted, and those tasks are errors in the result, not samples
            warn(f"{doc['dataset']}: {x['n_errors']} of {x.get('n_tasks')} call(s) failed")
    if rows:
        typer.echo(table(rows))
    n_skipped = sum(len(x.get("skipped", [])) + len(x.get("skipped_rows", [])) + int(x.get("n_errors") or 0) for x in v)
    code = exit_code(len(rows), len(errors) + n_skipped)
    if code == 2 and errors and all(CallsFailed.marker in m for m in errors):
        code = 1  # every call failed: a failure of the run, not of how it was asked for
    return code


def report(
    directory: Annotated[Path, typer.Argument(help="Directory with result JSON files (searched recursively).")],
    plot: Annotated[Optional[Path], Opt(help="Write a PNG bar chart of acc1 per dataset and model.")] = None,
    metric: Annotated[str, Opt(help="Metric to plot: acc1, acc5 or mean_per_class_recall.")] = "acc1",
) -> None:
    """Compare result files: a table, and optionally a PNG bar chart."""
    from visroute.eval.report import report_directory

    typer.echo(report_directory(directory, plot, metric))
    if plot is not None:
        typer.echo(f"wrote {plot}", err=True)
