"""Zero-shot classification throughput: visroute against the transformers pipeline and against the limits.

Two randomly initialised transformers CLIP models are written to a temporary folder and loaded through
``hf:DIR`` on the CPU, so the numbers measure the pipeline, not download or a particular checkpoint:

* ``tiny`` (32 wide, 2 layers; 224 px input): the model costs almost nothing, so decoding dominates, which
  is what a real model on a GPU looks like. Goal: visroute >= 2x the pipeline and >= 0.9 of the parallel
  decode limit.
* ``b32`` (ViT-B/32's shapes): the forward pass dominates. Goal: visroute >= 0.95 of the forward-only
  limit and >= the pipeline.

Per model, on the ImageNet sample JPEGs (``--data``/imagenet-sample), classifying against ``--labels`` class
names with one template, each timed ``--repeat`` times (best kept):

* ``visroute``: what ``visroute classify`` runs, in this process: ``prepare_classify`` (model load and head
  fit, untimed) then ``ClassifyJob.batches`` over the files (decoding in DataLoader workers, the model in
  this process), with fast decode (the default) and with ``--no-fast-decode`` (exact preprocessing);
* ``pipeline``: ``transformers.pipeline("zero-shot-image-classification")`` on the same model folder with
  its default image processor, given the file paths, batch size 64;
* ``decode limit``: ``iter_preprocessed_batches`` alone, same workers and settings as ``visroute`` with
  fast decode, no model: the most the decode side can deliver on this machine in this run;
* ``forward limit``: ``encode_images`` on batches decoded and preprocessed beforehand: the model alone.

Start-up: ``visroute classify ONE.JPEG -l cat,dog -m random-tiny --json`` as a subprocess (best of
``--repeat``; the random-tiny model is built once before), and whether ``torch._dynamo`` is imported on that
path (``python -X importtime``). Goal: <= 2 s.

Usage: ``python benchmarks/bench_classify.py [--data ../shared/data] [--limit-b32 200] [--repeat 3]``.
Writes benchmarks/results/bench_classify.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import visroute  # noqa: E402,F401  (before torch: sets the OpenMP wait policy the CLI runs with)
from _common import best_of, build_b32, build_tiny, data_dir, ratio, write_results  # noqa: E402

TEMPLATE = "a photo of a {c}."
BATCH = 64


def visroute_run(model_dir: Path, paths: list[Path], labels: list[str], fast: bool, workers: int | None):
    from visroute.batch_classify import prepare_classify

    templates = model_dir / "templates.txt"
    templates.write_text(TEMPLATE + "\n", encoding="utf-8")
    job = prepare_classify(paths, ",".join(labels), None, str(templates), f"hf:{model_dir}", "cpu")

    def run():
        n = sum(len(preds) for preds, _ in job.batches(5, BATCH, workers, fast, False))
        assert n == len(paths), n
    return run


def pipeline_run(model_dir: Path, paths: list[Path], labels: list[str]):
    from transformers import pipeline

    clf = pipeline("zero-shot-image-classification", model=str(model_dir), device="cpu")
    files = [str(p) for p in paths]
    kw = dict(candidate_labels=labels, hypothesis_template=TEMPLATE.replace("{c}", "{}"), batch_size=BATCH)
    clf(files[:2], **kw)  # warm-up

    def run():
        assert len(clf(files, **kw)) == len(files)
    return run


def decode_limit_run(model_dir: Path, paths: list[Path], workers: int | None):
    from visroute.data.images import iter_preprocessed_batches
    from visroute.models import load_model

    model = load_model(f"hf:{model_dir}", device="cpu")

    def run():
        n = 0
        for idx, _batch, bad in iter_preprocessed_batches(paths, model.preprocess, model.collate, BATCH, workers, 224):
            n += len(idx)
        assert n == len(paths)
    return run


def forward_limit_run(model_dir: Path, paths: list[Path]):
    from visroute.data.images import load_image
    from visroute.models import load_model

    model = load_model(f"hf:{model_dir}", device="cpu")
    items = [model.preprocess(load_image(p)) for p in paths]
    batches = [model.collate(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]
    model.encode_images(batches[0])

    def run():
        for b in batches:
            model.encode_images(b)
    return run


def startup(image: Path, repeat: int) -> dict:
    cmd = [sys.executable, "-m", "visroute.cli", "classify", str(image), "-l", "cat,dog", "-m", "random-tiny", "--json"]
    env = {**os.environ, "VISROUTE_CACHE": os.environ.get("VISROUTE_CACHE") or tempfile.mkdtemp(prefix="bench-cache-")}
    subprocess.run(cmd, env=env, capture_output=True, check=True)  # builds random-tiny once

    def run():
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    rec = best_of(run, repeat)
    imp = subprocess.run([sys.executable, "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True)
    mods = [line.split("|")[-1].strip() for line in imp.stderr.splitlines() if line.startswith("import time:")]
    heavy = {m: m in mods for m in ("torch", "torch._dynamo", "torchvision", "transformers", "sklearn")}
    chain = []
    if heavy["torch._dynamo"]:  # who pulls it in: the first modules whose import encloses it
        lines = [line for line in imp.stderr.splitlines() if line.startswith("import time:")]
        at = next(i for i, line in enumerate(lines) if line.split("|")[-1].strip() == "torch._dynamo")
        depth = len(lines[at].split("|")[-1]) - len(lines[at].split("|")[-1].lstrip())
        for line in lines[at + 1 :]:
            name = line.split("|")[-1]
            d = len(name) - len(name.lstrip())
            if d < depth:
                chain.append(name.strip())
                depth = d
            if d <= 1:
                break
    return {**rec, "imported": heavy, "dynamo_imported_via": chain[:6]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder with imagenet-sample/ (default: ../shared/data beside the repo)")
    ap.add_argument("--sizes", default="tiny,b32")
    ap.add_argument("--limit-tiny", type=int, default=1000, help="images for the tiny model")
    ap.add_argument("--limit-b32", type=int, default=192, help="images for the b32 model")
    ap.add_argument("--labels", type=int, default=10, help="class names classified against")
    ap.add_argument("--workers", type=int, default=None, help="decoding workers (default: one per core)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-startup", action="store_true")
    args = ap.parse_args()
    images = data_dir(args.data) / "imagenet-sample"
    rows = list(csv.DictReader(open(images / "labels.csv", encoding="utf-8")))
    labels = list(dict.fromkeys(r["classname"] for r in rows))[: args.labels]
    all_paths = [images / r["file"] for r in rows]
    out: dict = {"labels": len(labels), "batch_size": BATCH}
    with tempfile.TemporaryDirectory(prefix="bench_classify-") as tmp:
        for size in args.sizes.split(","):
            paths = all_paths[: args.limit_tiny if size == "tiny" else args.limit_b32]
            model_dir = {"tiny": build_tiny, "b32": build_b32}[size](Path(tmp) / size)
            steps = {"visroute": visroute_run(model_dir, paths, labels, True, args.workers),
                     "visroute_exact": visroute_run(model_dir, paths, labels, False, args.workers),
                     "pipeline": pipeline_run(model_dir, paths, labels)}
            steps.update({"decode_limit": decode_limit_run(model_dir, paths, args.workers)} if size == "tiny" else
                         {"forward_limit": forward_limit_run(model_dir, paths)})
            r = out[size] = {"images": len(paths)}
            for name, fn in steps.items():
                fn() if name.startswith("visroute") else None  # warm-up: worker start, caches
                rec = best_of(fn, args.repeat)
                r[name] = {**rec, "images_per_s": len(paths) / rec["seconds"]}
                print(f"{size:5s} {name:15s} {r[name]['images_per_s']:8.1f} img/s  (load1 {rec['load1']}, "
                      f"foreign {rec['foreign_load']})", flush=True)
            ips = lambda k: r[k]["images_per_s"] if k in r else None  # noqa: E731
            r["ratios"] = {"visroute/pipeline": ratio(ips("visroute"), ips("pipeline")),
                           "visroute_exact/pipeline": ratio(ips("visroute_exact"), ips("pipeline")),
                           "visroute/decode_limit": ratio(ips("visroute"), ips("decode_limit")),
                           "visroute/forward_limit": ratio(ips("visroute"), ips("forward_limit")),
                           "pipeline/forward_limit": ratio(ips("pipeline"), ips("forward_limit"))}
            print(f"{size:5s} ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items() if v), flush=True)
    if not args.skip_startup:
        s = out["startup"] = startup(all_paths[0], args.repeat)
        print(f"start-up: classify 1 image with random-tiny {s['seconds']:.2f} s (load1 {s['load1']}); "
              f"imported {s['imported']}; torch._dynamo via {s['dynamo_imported_via']}")
    write_results("bench_classify", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
