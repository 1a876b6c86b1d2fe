"""Command-line interface: ``visroute classify``, ``visroute models``."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from pathlib import Path
from typing import Annotated, Optional

import typer

from visroute.errors import VisrouteError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Image classification with vision-language models.")

EXIT_OK, EXIT_SOME_SKIPPED, EXIT_USAGE = 0, 1, 2


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def _fail(message: str) -> "typer.Exit":
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_USAGE)


@app.command()
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    labels: Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated class names.")] = None,
    labels_file: Annotated[Optional[str], typer.Option(help="Class names: .txt (one per line), JSON list, or FILE.json:KEY.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model spec (see `visroute models`).")] = None,
    templates: Annotated[Optional[str], typer.Option(help="Prompt templates with {c}: .txt, JSON list, or FILE.json:KEY.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to report per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: one per core).")] = None,
    fast_decode: Annotated[bool, typer.Option(help="Opt-in reduced-size JPEG decoding: faster, pixels differ slightly.")] = False,
    progress: Annotated[Optional[bool], typer.Option(help="Progress bar (default: on for more than 8 images).")] = None,
) -> None:
    """Zero-shot classify images against class names. Exit code 0: all classified; 1: some files skipped; 2: error."""
    from visroute.classify import iter_classify
    from visroute.data.images import find_images
    from visroute.data.text import load_templates, parse_labels
    from visroute.heads.zeroshot import ZeroShotClassifier
    from visroute.models import DEFAULT_MODEL, load_model

    _quiet_libraries()
    try:
        classnames, repeated = parse_labels(labels, labels_file)
        if repeated:
            typer.secho(f"warning: repeated label(s) merged: {', '.join(repeated)}", err=True, fg=typer.colors.YELLOW)
        template_list = load_templates(templates)
        image_paths, skipped = find_images(paths)
        if not image_paths and not skipped:
            raise VisrouteError("no image files found under the given paths")
        clip = load_model(model or DEFAULT_MODEL, device=device, dtype=dtype)
        head = ZeroShotClassifier(clip, template_list).fit(classnames)
    except VisrouteError as e:
        raise _fail(str(e))

    if clip.is_random and not as_json:
        typer.secho(f"note: {clip.spec} has random weights (smoke test); predictions are at chance level.",
                    err=True, fg=typer.colors.YELLOW)
    show_bar = progress if progress is not None else len(image_paths) > 8
    draft = _draft_size(clip) if fast_decode else None
    predictions = []
    for preds, bad in iter_classify(head, image_paths, top_k, batch_size, workers, draft, show_bar):
        predictions += preds
        skipped += bad
        if not as_json:
            for p in preds:
                ranked = ", ".join(f"{lab} ({s:.3f})" for lab, s in zip(p.labels, p.scores))
                typer.echo(f"{p.path}\t{ranked}")
    if as_json:
        doc = {
            **clip.describe(),
            "labels": classnames,
            "templates": template_list,
            "top_k": top_k,
            "predictions": [{"path": p.path, "labels": p.labels, "scores": p.scores} for p in predictions],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
            "n_classified": len(predictions),
            "n_skipped": len(skipped),
        }
        typer.echo(json.dumps(doc, indent=2))
    for s in skipped:
        typer.secho(f"skipped: {s.path}: {s.reason}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"classified {len(predictions)} image(s), skipped {len(skipped)}", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if skipped else EXIT_OK)


def _draft_size(model) -> int | None:
    """Smallest side the model's preprocessing needs, for reduced-size JPEG decoding.

    transformers 5 stores ``size`` as a SizeDict (attributes), 4.x as a dict; both are read.
    """
    size = getattr(getattr(model, "image_processor", None), "size", None)
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))  # noqa: E731
    side = (get("shortest_edge") or get("height")) if size is not None else None
    return int(side) if side else 224


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the known model specs and which of them are available locally (no download)."""
    from visroute.models.registry import list_models

    rows = list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['name']:<{width}}  {'cached' if r['cached'] else '      '}  {r['spec']}")
    typer.echo("\nAlso accepted: hf:<hub id or dir>, openclip:<arch>/<tag or checkpoint>, "
               "openclip:local-dir:<dir>, a local model directory.")


@app.command("eval")
def eval_cmd(
    dataset: Annotated[list[str], typer.Option("--dataset", "-d", help="Dataset or task-file spec; repeat for several.")],
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="Contrastive model spec; repeat for several.")] = None,
    head: Annotated[str, typer.Option(help="zeroshot, descriptions, cupl, random-words, random-chars, classname-free, disclip; "
                                           "task pipelines: vlm, vlm+llm, clip-options.")] = "zeroshot",
    vlm: Annotated[Optional[str], typer.Option(help="Generative VLM spec (hf:<dir> or openai-compatible:<url>#<model>).")] = None,
    llm: Annotated[Optional[str], typer.Option(help="LLM spec for vlm+llm (hf:<dir> or openai-compatible:<url>#<model>).")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt template name (mcq, mcq-text, open, ...) or file.")] = None,
    options_top_k: Annotated[Optional[int], typer.Option(help="Classification datasets: options = top-k of a CLIP pre-filter (--model).")] = None,
    prices: Annotated[Optional[Path], typer.Option(help="Price table JSON (per model: tokens, images, seconds).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Generation length for vlm / llm.")] = 64,
    timeout: Annotated[float, typer.Option(help="Seconds per HTTP request.")] = 120.0,
    retries: Annotated[int, typer.Option(min=0)] = 4,
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel HTTP requests.")] = 4,
    templates: Annotated[Optional[str], typer.Option(help="Templates with {c}: .txt, JSON list or FILE.json:KEY.")] = None,
    classnames: Annotated[Optional[str], typer.Option(help="Class names overriding the dataset's (FILE or FILE.json:KEY).")] = None,
    descriptions: Annotated[Optional[str], typer.Option(help="Description file (DCLIP, CuPL, DisCLIP or visroute JSON).")] = None,
    fallback_descriptions: Annotated[Optional[str], typer.Option(help="Descriptions for classes the first file leaves empty.")] = None,
    description_style: Annotated[str, typer.Option(help="dclip ('{c}, which is/has {d}'), photo ('A photo of a {c}, {d}.') or sentence.")] = "dclip",
    repeats: Annotated[int, typer.Option(min=1, help="Repetitions of the random controls (mean +- std).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the random controls.")] = 0,
    w_cls: Annotated[float, typer.Option(help="Class-name weight for classname-free / disclip scoring.")] = 0.0,
    w_cls_sweep: Annotated[Optional[str], typer.Option(help="Comma-separated w_cls values to sweep (classname-free).")] = None,
    selection_dataset: Annotated[Optional[str], typer.Option(help="Labelled selection split for disclip.")] = None,
    n_per_class: Annotated[Optional[int], typer.Option(help="Selection images per class (default: smallest class).")] = None,
    k: Annotated[int, typer.Option("-k", help="disclip neighbourhood size.")] = 3,
    m: Annotated[int, typer.Option("-M", "--m-descriptions", help="disclip descriptions kept per candidate.")] = 5,
    disclip_mode: Annotated[str, typer.Option(help="classname-free or classname-containing.")] = "classname-free",
    output: Annotated[Path, typer.Option(help="Directory for result JSON + Parquet files.")] = Path("results"),
    skip_existing: Annotated[bool, typer.Option(help="Skip runs whose result JSON already exists.")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: one per core).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per feature-cache shard (resume granularity).")] = 2048,
    fast_decode: Annotated[bool, typer.Option(help="Opt-in reduced-size JPEG decoding.")] = False,
    device: Annotated[str, typer.Option()] = "auto",
    dtype: Annotated[str, typer.Option()] = "auto",
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Evaluate models x datasets; image features are cached, so other heads/templates re-encode nothing."""
    from visroute.eval.run import EvalOptions, evaluate
    from visroute.models import load_model

    _quiet_libraries()
    try:
        sweep = [float(x) for x in w_cls_sweep.split(",") if x.strip()] if w_cls_sweep else []
    except ValueError:
        raise _fail(f"--w-cls-sweep must be comma-separated numbers, got {w_cls_sweep!r}")
    opts = EvalOptions(head=head, templates=templates, classnames=classnames, descriptions=descriptions,
                       fallback_descriptions=fallback_descriptions, description_style=description_style,
                       repeats=repeats, seed=seed, w_cls=w_cls, w_cls_sweep=sweep, selection_dataset=selection_dataset,
                       n_per_class=n_per_class, k=k, m=m, disclip_mode=disclip_mode, output=output, batch_size=batch_size,
                       workers=workers, shard_size=shard_size, fast_decode=fast_decode, skip_existing=skip_existing,
                       progress=progress, device=device, dtype=dtype)
    if head in TASK_HEADS:
        rows, failed = _eval_tasks(head, dataset, model or [], vlm, llm, prompt, options_top_k, prices, max_tokens, timeout,
                                   retries, concurrency, output, device, dtype)
        if rows:
            typer.echo(_task_table(rows))
        raise typer.Exit(EXIT_USAGE if failed and not rows else (EXIT_SOME_SKIPPED if failed else EXIT_OK))
    if not model:
        raise _fail(f"head '{head}' needs --model")
    rows, failed = [], 0
    for spec in model:
        loaded = None
        for ds in dataset:
            try:
                if loaded is None and not skip_existing:
                    loaded = load_model(spec, device=device, dtype=dtype)
                doc = evaluate(loaded or spec, ds, opts)
            except VisrouteError as e:
                typer.secho(f"error: {spec} on {ds}: {e}", err=True, fg=typer.colors.RED)
                failed += 1
                continue
            rows.append(doc)
            for s in doc.get("visroute", {}).get("skipped", []):
                typer.secho(f"skipped: {s['id']}: {s['reason']}", err=True, fg=typer.colors.YELLOW)
    if rows:
        typer.echo(_summary_table(rows))
    raise typer.Exit(EXIT_USAGE if failed and not rows else (EXIT_SOME_SKIPPED if failed else EXIT_OK))


TASK_HEADS = ("vlm", "vlm+llm", "clip-options")


def _eval_tasks(head, datasets, models, vlm, llm, prompt, options_top_k, prices, max_tokens, timeout, retries,
                concurrency, output, device, dtype) -> tuple[list[dict], int]:
    from visroute.data.datasets import load_dataset
    from visroute.eval.tasks_run import evaluate_tasks
    from visroute.heads.vlm import CLIPOptionsPipeline, VLMDirectPipeline, VLMThenLLMPipeline
    from visroute.llm import ResponseCache, load_generator
    from visroute.models import load_model
    from visroute.tasks.costs import PriceTable
    from visroute.tasks.model import load_tasks, tasks_from_classification

    rows, failed = [], 0
    try:
        table = PriceTable.load(prices)
        cache = ResponseCache()
        gen_kw = dict(max_tokens=max_tokens, timeout=timeout, max_retries=retries, concurrency=concurrency, device=device)
        clip = load_model(models[0], device=device, dtype=dtype) if models else None
        if head == "clip-options":
            if clip is None:
                raise VisrouteError("head 'clip-options' needs --model (a contrastive model)")
            pipeline = CLIPOptionsPipeline(clip, prices=table)
        elif head == "vlm":
            if not vlm:
                raise VisrouteError("head 'vlm' needs --vlm")
            pipeline = VLMDirectPipeline(load_generator(vlm, cache=cache, **gen_kw), prompt or "mcq", table)
        else:
            if not vlm or not llm:
                raise VisrouteError("head 'vlm+llm' needs --vlm and --llm")
            pipeline = VLMThenLLMPipeline(load_generator(vlm, cache=cache, **gen_kw), load_generator(llm, cache=cache, **gen_kw),
                                          prices=table, **({"reason_prompt": prompt} if prompt else {}))
    except VisrouteError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        return [], 1
    for spec in datasets:
        try:
            base = spec.partition("#")[0]
            if base.endswith((".jsonl", ".csv")) and _has_question_column(base):
                tasks, skipped = load_tasks(spec)
                name = Path(base).stem
            else:
                ds = load_dataset(spec)
                top = None
                if options_top_k:
                    if clip is None:
                        raise VisrouteError("--options-top-k needs --model for the CLIP pre-filter")
                    from visroute.features.cache import FeatureCache
                    from visroute.heads.zeroshot import ZeroShotClassifier

                    fs = FeatureCache().encode(clip, ds)
                    idx, X = fs.load()
                    top = np.zeros((len(ds), options_top_k), dtype=np.int64)
                    top[idx] = ZeroShotClassifier(clip).fit(ds.classnames).predict_topk(X, options_top_k)[0]
                tasks, skipped, name = tasks_from_classification(ds, top), [], ds.name
            for s in skipped:
                typer.secho(f"skipped task row {s['row']}: {s['reason']}", err=True, fg=typer.colors.YELLOW)
            random = bool(clip is not None and clip.is_random) or any("random-tiny" in m for m in pipeline.models)
            doc = evaluate_tasks(pipeline, tasks, name, output, prompt or "default", skipped, random)
            rows.append(doc)
        except VisrouteError as e:
            typer.secho(f"error: {head} on {spec}: {e}", err=True, fg=typer.colors.RED)
            failed += 1
    return rows, failed


def _has_question_column(path: str) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline()
    except OSError:
        return False
    return "question" in first


def _task_table(rows: list[dict]) -> str:
    head = ["dataset", "pipeline", "models", "acc1", "chance", "unparsable", "errors", "cost", "cost/task", "latency", "cached"]
    lines = []
    for d in rows:
        v = d["visroute"]
        lines.append([d["dataset"], v["head"], d["model"], f"{d['metrics']['acc1']:.3f}", f"{d['metrics']['chance_acc1']:.3f}",
                      str(v["n_unparsable"]), str(v["n_errors"]), f"{v['cost_total']:.6f}", f"{(v['cost_per_task'] or 0):.2e}",
                      f"{(v['latency_mean_s'] or 0):.3f}s", str(v["n_cached"])])
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


def _summary_table(rows: list[dict]) -> str:
    head = ["dataset", "model", "head", "prompts", "acc1", "acc5", "mpcr", "n", "skipped", "img/s", "note"]
    lines = []
    for d in rows:
        v = d.get("visroute", {})
        m = d["metrics"]
        note = ("random weights" if v.get("random_weights") else "") + (" (existing)" if d.get("_skipped_existing") else "")
        prompts = v.get("templates") if v.get("head", "zeroshot") == "zeroshot" else Path(str(v.get("descriptions"))).name
        lines.append([d["dataset"], v.get("model_spec", d["model"]), v.get("head", ""), str(prompts),
                      f"{m['acc1']:.4f}", f"{m['acc5']:.4f}", f"{m['mean_per_class_recall']:.4f}",
                      str(v.get("n_evaluated", "")), str(v.get("n_skipped", "")),
                      f"{v['images_per_s']:.1f}" if v.get("images_per_s") else "", note.strip()])
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="Directory with result JSON files (searched recursively).")],
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG bar chart of acc1 per dataset and model.")] = None,
    metric: Annotated[str, typer.Option(help="Metric to plot: acc1, acc5 or mean_per_class_recall.")] = "acc1",
) -> None:
    """Compare result files: a table, and optionally a PNG bar chart."""
    from visroute.eval.report import plot_results
    from visroute.eval.results import read_results

    rows = read_results(directory)
    if not rows:
        raise _fail(f"no visroute result files under {directory}")
    typer.echo(_summary_table(rows))
    if plot is not None:
        try:
            plot_results(rows, plot, metric)
        except VisrouteError as e:
            raise _fail(str(e))
        typer.echo(f"wrote {plot}", err=True)


@app.command()
def describe(
    classes: Annotated[str, typer.Option(help="Class names: .txt, JSON list, FILE.json:KEY or CSV column.")],
    llm: Annotated[str, typer.Option(help="openai-compatible:<base_url>#<model> or hf:<local causal LM dir>.")],
    output: Annotated[Path, typer.Option(help="Where to write the description set (visroute JSON).")],
    style: Annotated[str, typer.Option(help="dclip (descriptor lists), cupl (sentences) or contrastive.")] = "dclip",
    neighbours: Annotated[int, typer.Option(min=1, help="Confusable classes per class (contrastive style).")] = 3,
    confusion: Annotated[Optional[Path], typer.Option(help="Result JSON of a zero-shot eval: neighbours from its confusion matrix.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Contrastive model whose text embeddings give neighbours.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per HTTP request.")] = 60.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries per request (exponential backoff).")] = 4,
    concurrency: Annotated[int, typer.Option(min=1, help="Parallel HTTP requests.")] = 4,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    progress: Annotated[bool, typer.Option()] = True,
) -> None:
    """Write class descriptions with an LLM. Responses are cached (SQLite): a re-run resumes for free."""
    from visroute.data.text import parse_labels
    from visroute.descriptions import save_descriptions
    from visroute.descriptions.generate import confusion_neighbours, generate_descriptions, text_neighbours
    from visroute.llm import ResponseCache, load_generator

    _quiet_libraries()
    try:
        classnames, _ = parse_labels(labels_file=classes)
        near = None
        if style == "contrastive":
            n = min(neighbours, len(classnames) - 1)
            if n < 1:
                raise VisrouteError("the contrastive style needs at least two classes")
            if confusion is not None:
                doc = json.loads(confusion.read_text())
                cm = doc.get("visroute", {}).get("confusion_matrix")
                if cm is None or len(cm) != len(classnames):
                    raise VisrouteError(f"{confusion} has no confusion matrix for {len(classnames)} classes")
                near = confusion_neighbours(cm, n)
            else:
                from visroute.models import load_model

                emb = load_model(model or "random-tiny", device="cpu").encode_texts([f"a photo of a {c}." for c in classnames])
                near = text_neighbours(emb.numpy(), n)
        kw = {"max_tokens": max_tokens}
        if llm.startswith("openai-compatible:"):
            kw.update(timeout=timeout, max_retries=retries, concurrency=concurrency)
        gen = load_generator(llm, cache=ResponseCache(), **kw)
        dset, report = generate_descriptions(gen, classnames, style, near, progress=progress)
    except VisrouteError as e:
        raise _fail(str(e))
    save_descriptions(output, dset, report=report.as_dict(), neighbours=near)
    for f in report.failed:
        typer.secho(f"failed: {f['class']}: {f['error']}", err=True, fg=typer.colors.RED)
    for u in report.unparsable:
        typer.secho(f"unparsable answer for {u['class']}: {u['answer'][:80]!r}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"wrote {output}: {sum(map(len, dset.descriptions))} descriptions for {len(classnames)} classes; "
               f"{report.requests} requests ({report.cached} cached), {len(report.failed)} failed, "
               f"{len(report.unparsable)} unparsable, {len(report.empty_classes)} classes without descriptions", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if report.failed or report.empty_classes else EXIT_OK)


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    descriptions: Annotated[str, typer.Option(help="Description file (any supported format).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Contrastive model spec.")] = "random-tiny",
    classes: Annotated[Optional[str], typer.Option(help="Class names (default: the description file's keys).")] = None,
    selection_dataset: Annotated[Optional[str], typer.Option(help="Labelled split: explain the disclip selection.")] = None,
    top_k: Annotated[int, typer.Option(min=1)] = 3,
    html_out: Annotated[Path, typer.Option("--html", help="HTML page to write.")] = Path("explain.html"),
    as_json: Annotated[bool, typer.Option("--json", help="Also print the explanation as JSON.")] = False,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Why each image got its class: top-k classes and the descriptions that decided, with contributions."""
    from visroute.data.text import parse_labels
    from visroute.descriptions import load_descriptions
    from visroute.descriptions.explain import render_html, thumbnail_data_uri
    from visroute.features import encode_image_files
    from visroute.features.cache import FeatureCache
    from visroute.heads.descriptions import DescriptionEnsembleClassifier
    from visroute.heads.selection import DiscriminativeSelectionClassifier
    from visroute.models import load_model

    _quiet_libraries()
    try:
        dset = load_descriptions(descriptions)
        names = parse_labels(labels_file=classes)[0] if classes else list(dset.classnames)
        clip = load_model(model, device=device)
        if selection_dataset:
            from visroute.data.datasets import load_dataset

            sel = load_dataset(selection_dataset, names)
            idx, X_sel = FeatureCache().encode(clip, sel).load()
            head = DiscriminativeSelectionClassifier(clip, dset, k=top_k).fit(names, X_sel, sel.labels[idx])
            head_name = "disclip"
        else:
            head = DescriptionEnsembleClassifier(clip, dset, style="sentence" if dset.kind == "sentence" else "dclip").fit(names)
            head_name = "descriptions"
        enc = encode_image_files(clip, images, num_workers=0)
    except (VisrouteError, ValueError) as e:
        raise _fail(str(e))
    items = []
    for path, emb in zip(enc.paths, enc.embeddings):
        expl = head.explain(emb) if head_name == "disclip" else head.explain(emb, top_k)
        items.append({"path": path, "model": clip.spec, "head": head_name, "random_weights": clip.is_random,
                      "classes": expl})
    html_out.write_text(render_html([{**it, "image": thumbnail_data_uri(it["path"])} for it in items]), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(items, indent=2))
    else:
        for it in items:
            best = it["classes"][0]
            typer.echo(f"{it['path']}\t{best['class']}\t" + "; ".join(d["text"] for d in best["descriptions"][:3]))
    for s in enc.skipped:
        typer.secho(f"skipped: {s.path}: {s.reason}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"wrote {html_out}", err=True)
    raise typer.Exit(EXIT_SOME_SKIPPED if enc.skipped else EXIT_OK)


grid_app = typer.Typer(help="Benchmark grids: models x datasets x prompt variants -> routing records.", no_args_is_help=True)
app.add_typer(grid_app, name="grid")


@grid_app.command("run")
def grid_run(grid_file: Annotated[Path, typer.Argument(help="GRID.yaml (see visroute.router.grid).")],
             progress: Annotated[bool, typer.Option()] = True) -> None:
    """Run every cell not yet done (resumable) and write <output>/records.parquet."""
    from visroute.router.grid import GridSpec, run_grid

    _quiet_libraries()
    try:
        target = run_grid(GridSpec.load(grid_file), progress=progress, log=lambda m: typer.echo(m, err=True))
    except VisrouteError as e:
        raise _fail(str(e))
    import pyarrow.parquet as pq

    t = pq.read_table(target)
    typer.echo(f"wrote {target}: {t.num_rows} records, models: {', '.join(sorted(set(t.column('model').to_pylist())))}")


class _RouteGroup(__import__("typer").core.TyperGroup):
    """`visroute route IMAGE ...` runs the `ask` command; `visroute route build|train|eval` are subcommands."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "ask", self.commands["ask"], args
        return super().resolve_command(ctx, args)


route_app = typer.Typer(cls=_RouteGroup, no_args_is_help=True,
                        help="Routing: build a table from records, train a router, evaluate it, route a task.")
app.add_typer(route_app, name="route")


@route_app.command("build")
def route_build(
    records: Annotated[list[Path], typer.Argument(help="Records Parquet file(s) (from `visroute grid run`).")],
    out: Annotated[Path, typer.Option(help="Directory for the routing table.")] = Path("routing-table"),
    granularity: Annotated[str, typer.Option(help="sample or dataset-prompt.")] = "sample",
    split: Annotated[str, typer.Option(help="dataset (held-out datasets) or sample.")] = "sample",
    holdout: Annotated[Optional[str], typer.Option(help="Comma-separated test datasets (split=dataset).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Aggregate records into a routing table with train/val/test splits."""
    from visroute.router.table import build_table, read_records

    try:
        table = build_table(read_records(records), granularity, split, holdout.split(",") if holdout else None, seed=seed)
    except VisrouteError as e:
        raise _fail(str(e))
    table.save(out)
    counts = {k: int((table.split == k).sum()) for k in ("train", "val", "test")}
    typer.echo(f"wrote {out}: {len(table)} rows x {len(table.models)} models ({', '.join(table.models)}); splits {counts}")


@route_app.command("train")
def route_train(
    table_dir: Annotated[Path, typer.Argument(help="Routing table directory.")],
    router: Annotated[str, typer.Option(help="knn, logistic, mlp, mf or slm.")] = "knn",
    out: Annotated[Path, typer.Option(help="Directory for the trained router.")] = Path("router"),
    features: Annotated[str, typer.Option(help="text or text+image.")] = "text",
    image_model: Annotated[Optional[str], typer.Option(help="Contrastive model for image features (text+image).")] = None,
    target_cost: Annotated[Optional[float], typer.Option(help="Calibrate lambda to this mean cost per task.")] = None,
    target_share: Annotated[Optional[float], typer.Option(help="Calibrate lambda to this share of --heavy calls.")] = None,
    heavy: Annotated[Optional[str], typer.Option(help="Model whose share --target-share bounds (default: dearest).")] = None,
    grid: Annotated[Optional[Path], typer.Option(help="GRID.yaml whose model entries say how to call each model.")] = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="slm router: local transformers checkpoint (default: MiniLM).")] = None,
) -> None:
    """Train a router on the table's train split; lambda is calibrated on its validation split."""
    from visroute.router.bundle import train_bundle
    from visroute.router.table import RoutingTable

    _quiet_libraries()
    try:
        table = RoutingTable.load(table_dir)
        configs = {}
        if grid is not None:
            from visroute.router.grid import GridSpec

            configs = {m["name"]: m for m in GridSpec.load(grid).models}
        kw = {"checkpoint": checkpoint} if router == "slm" and checkpoint else {}
        bundle = train_bundle(table, router, features, image_model, target_cost, target_share, heavy, configs, kw)
    except VisrouteError as e:
        raise _fail(str(e))
    bundle.save(out)
    typer.echo(f"wrote {out}: {router} router over {', '.join(bundle.models)}; lambda={bundle.lam:.4g}")


@route_app.command("eval")
def route_eval(
    table_dir: Annotated[Path, typer.Argument(help="Routing table directory.")],
    router_dir: Annotated[Path, typer.Option("--router", help="Trained router directory.")] = Path("router"),
    out: Annotated[Path, typer.Option(help="Directory for report.json and curve.png.")] = Path("route-report"),
    part: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
) -> None:
    """Router vs always-one-model, random, cheapest and oracle; accuracy-cost curve; kNN baseline alongside."""
    from visroute.router.bundle import RouterBundle
    from visroute.router.evaluate import evaluate_router, plot_report
    from visroute.router.routers import KNNRouter
    from visroute.router.table import RoutingTable

    _quiet_libraries()
    try:
        table = RoutingTable.load(table_dir)
        bundle = RouterBundle.load(router_dir)
        if bundle.models != table.models:
            raise VisrouteError(f"router models {bundle.models} differ from the table's {table.models}")
        test = table.part(part)
        if len(test) == 0:
            raise VisrouteError(f"the table has no '{part}' rows")
        paths = test.image_path if bundle.features == "text+image" else None
        proba = bundle.predict_proba(test.text, paths)
        report = evaluate_router(proba, test.success, test.cost, table.models, bundle.costs, test.weight, bundle.lam)
        train = table.part("train")
        from visroute.router.embed import TextEmbedder

        emb = TextEmbedder()
        knn = KNNRouter().fit(emb.embed(train.text), train.success, train.weight)
        base = evaluate_router(knn.predict_proba(emb.embed(test.text)), test.success, test.cost, table.models, bundle.costs,
                               test.weight, bundle.lam)
        report["knn_baseline"] = {"operating_point": base["operating_point"], "router_best_accuracy": base["router_best_accuracy"],
                                  "cost_to_match_best_single": base["cost_to_match_best_single"]}
        report["router"] = {"kind": bundle.kind, "features": bundle.features, "dir": str(router_dir), "part": part,
                            "rows": len(test)}
    except VisrouteError as e:
        raise _fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    from visroute.eval.results import write_json

    write_json(out / "report.json", report)
    plot_report(report, out / "curve.png", title=f"visroute {bundle.kind} router on {part} ({len(test)} tasks)")
    op = report["operating_point"]
    typer.echo(f"{'policy':<28} {'accuracy':>9} {'cost/task':>12}")
    for name, s in report["single_models"].items():
        typer.echo(f"{'always ' + name:<28} {s['accuracy']:>9.4f} {s['cost']:>12.3g}")
    for name in ("random", "oracle"):
        typer.echo(f"{name:<28} {report[name]['accuracy']:>9.4f} {report[name]['cost']:>12.3g}")
    typer.echo(f"{'router (' + bundle.kind + ')':<28} {op['accuracy']:>9.4f} {op['cost']:>12.3g}")
    kb = report["knn_baseline"]["operating_point"]
    typer.echo(f"{'knn baseline':<28} {kb['accuracy']:>9.4f} {kb['cost']:>12.3g}")
    pgr = op.get("performance_gap_recovered")
    frac = report.get("cost_to_match_best_single_fraction_of_most_expensive")
    typer.echo(f"performance gap recovered: {pgr if pgr is None else round(pgr, 3)}; cost to match the best single model: "
               f"{'never' if frac is None else f'{frac:.2f} x the most expensive model'}")
    typer.echo(f"wrote {out / 'report.json'} and {out / 'curve.png'}", err=True)


@route_app.command("ask")
def route_ask(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    task: Annotated[str, typer.Option(help="Instruction or question.")],
    options: Annotated[str, typer.Option(help="Comma-separated response options.")],
    router_dir: Annotated[Path, typer.Option("--router", help="Trained router directory.")] = Path("router"),
    dataset: Annotated[str, typer.Option(help="Dataset name the router should assume.")] = "user",
    lam: Annotated[Optional[float], typer.Option("--lambda", help="Override the calibrated lambda.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Only choose; do not call the model.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Pick a model for one task with the router and run it (also: `visroute route IMAGE --task ... --options ...`)."""
    from visroute.router.bundle import RouterBundle
    from visroute.router.run import route_task

    _quiet_libraries()
    opts = [o.strip() for o in options.split(",") if o.strip()]
    try:
        if len(opts) < 2:
            raise VisrouteError("give at least two --options")
        result = route_task(RouterBundle.load(router_dir), str(image), task, opts, dataset, lam, run=not dry_run)
    except VisrouteError as e:
        raise _fail(str(e))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"chosen model: {result['chosen']}  (lambda={result['lambda']:.4g})")
    for name, p in result["predicted_accuracy"].items():
        typer.echo(f"  {name:<20} predicted accuracy {p:.3f}   expected cost {result['expected_cost'][name]:.3g}")
    if "answer" in result:
        typer.echo(f"answer: {result['answer']}  (raw: {result['raw_answer']!r}, parsed by {result['parse_rule']})")


cache_app = typer.Typer(help="Inspect and free the feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def cache_ls(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List cached feature sets."""
    from visroute.features.cache import FeatureCache

    cache = FeatureCache()
    entries = cache.entries()
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    typer.echo(f"feature cache: {cache.root}")
    for e in entries:
        state = "complete" if e["complete"] else f"partial {e['shards_done']}/{e['n_shards']} shards"
        typer.echo(f"{e['key']}  {e['bytes'] / 1e6:8.1f} MB  {e['n_items']} images  {state}  {e['model']}  {e['dataset']}")
    typer.echo(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 1e6:.1f} MB")


@cache_app.command("clear")
def cache_clear(key: Annotated[Optional[str], typer.Argument(help="Entry key (or prefix); all if omitted.")] = None) -> None:
    """Delete cached feature sets."""
    from visroute.features.cache import FeatureCache

    n = FeatureCache().clear(key)
    typer.echo(f"removed {n} entr{'y' if n == 1 else 'ies'}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    sys.exit(main())
