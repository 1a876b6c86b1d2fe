"""Throughput of zero-shot image classification with visroute, against simpler baselines.

Two randomly initialised transformers CLIP models are built into a temporary directory and
loaded through ``visroute.models.load_model("hf:DIR")`` on the CPU:

  * ``b32``  - ViT-B/32-sized (vision 768 wide x 12 layers, text 512 wide x 12 layers);
  * ``tiny`` - visroute's tiny config (32 wide, 2 layers).

Table 1, images per second over the ImageNet sample JPEGs (one template, "a photo of a {c}.",
and the first ``--pipeline-labels`` distinct class names for (a), (a') and (c)):

  (a)  ``visroute classify DIR --json --no-progress`` run as a subprocess. "raw" is N / wall time
       of the whole process; "corrected" removes start-up (imports, model load, head build) by
       also timing a run on ``--small`` images: (N - n_small) / (t_full - t_small).
  (a') the same with ``--fast-decode``.
  (b)  image tower only: every image is decoded and preprocessed once, up front, then
       ``model.encode_images`` is timed over batches of 64.
  (c)  transformers ``pipeline("zero-shot-image-classification")`` on the loaded transformers
       model, given the file paths, batch_size=64 (it decodes in the main process and encodes
       the label prompts again for every batch).
  (d)  decode + preprocess only, one process: PIL open, convert("RGB"), the image processor.
  (d2) decode + preprocess only through visroute's DataLoader
       (``visroute.data.images.iter_preprocessed_batches``, default workers = one per core).

(b) and (c) get one untimed warm-up call first. (a), (b) and (c) use ``--limit`` images (default:
200 for b32, all for tiny); (d) and (d2) always use all images, since they do not depend on the
model size. Ratios are of images/second, so > 1 means the first method is faster.

Table 2, zero-shot head build for all class names x the 80 ImageNet templates (80,000 prompts):
``ZeroShotClassifier(model, templates).fit(classnames)`` against a tight loop that tokenises
(padding, truncation to 77) and runs ``get_text_features`` in batches of 1024. Tiny model only,
unless ``--head-b32`` is given.

torch keeps its default thread count. TOKENIZERS_PARALLELISM is set to "false" unless already
set, as ``visroute classify`` does, so every tokenizer (in and out of the CLI) runs the same way.

The machine may be shared. Before each timing the script waits (up to ``--quiet-wait`` seconds)
for other processes to go idle, and every number is printed with the "foreign load": the average
number of cores that processes other than this one and its children kept busy while it was taken
(from /proc/stat and getrusage). Numbers taken at a foreign load well above 0 are pessimistic.
Table 2 also gives the visroute/tight ratio by this process's CPU time, which contention distorts less.

Usage::

    python benchmarks/bench_classify.py [--images DIR] [--limit N] [--sizes tiny,b32]
                                        [--pipeline-labels N] [--head-b32]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

DATA = Path("/work/shared/data")
DEFAULT_IMAGES = DATA / "imagenet-sample"
CLASSNAMES_JSON = DATA / "classnames" / "en_classnames.json"
TEMPLATES_JSON = DATA / "classnames" / "en_zeroshot_classification_templates.json"
TEMPLATE = "a photo of a {c}."
BATCH = 64
DEFAULT_LIMIT = {"b32": 200, "tiny": None}


# --------------------------------------------------------------------------- models


def build_b32(directory: Path) -> Path:
    """A random CLIP with ViT-B/32's shapes, saved like visroute's tiny models (char-level tokenizer)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from visroute.testing.tiny_models import write_clip_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(directory)
    vocab_size = len(CLIPTokenizer.from_pretrained(directory))
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32),
        projection_dim=512,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(directory)
    return directory


def build_tiny(directory: Path) -> Path:
    from visroute.testing.tiny_models import build_tiny_clip

    return build_tiny_clip(directory)


BUILDERS = {"tiny": build_tiny, "b32": build_b32}


# --------------------------------------------------------------------------- helpers


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its reaped children)."""
    import resource

    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    return machine, own


class Timed:
    """Wall time of a block, and how many cores other processes kept busy meanwhile ("foreign" load).

    The machine may be shared; a foreign load well above 0 means the timing is pessimistic.
    """

    def __enter__(self) -> "Timed":
        self._cpu = busy_cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        machine, own = busy_cpu_seconds()
        self.cpu = own - self._cpu[1]
        self.foreign = max(0.0, (machine - self._cpu[0]) - self.cpu) / self.seconds


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until other processes use under ``threshold`` cores; return the last load."""
    deadline = time.monotonic() + max_wait
    while True:
        with Timed() as t:
            time.sleep(1.0)
        if t.foreign < threshold or time.monotonic() >= deadline:
            return t.foreign


@dataclass
class Measure:
    """Best wall time and best own CPU time over repeats, and the worst foreign load seen meanwhile."""

    seconds: float = float("inf")
    cpu: float = float("inf")
    foreign: float = 0.0

    def add(self, t: "Timed | Measure") -> None:
        self.seconds = min(self.seconds, t.seconds)
        self.cpu = min(self.cpu, t.cpu)
        self.foreign = max(self.foreign, t.foreign)


QUIET_WAIT = 5.0  # set from --quiet-wait


def clock(fn, repeat: int = 1) -> Measure:
    """Time ``repeat`` calls of ``fn``, each after waiting for the machine to be quiet."""
    m = Measure()
    for _ in range(repeat):
        if QUIET_WAIT > 0:
            wait_for_quiet(QUIET_WAIT)
        with Timed() as t:
            fn()
        m.add(t)
    return m


def read_classnames(images_dir: Path) -> list[str]:
    with open(images_dir / "labels.csv", newline="", encoding="utf-8") as f:
        return [row["classname"] for row in csv.DictReader(f)]


def distinct(names: list[str]) -> list[str]:
    """Drop repeats (ImageNet has two 'missile's and two 'sunglasses'); the CLI rejects duplicates."""
    return list(dict.fromkeys(names))


def link_subset(paths: list[Path], directory: Path) -> Path:
    """A folder of symlinks to ``paths``, so the CLI can be handed one directory."""
    directory.mkdir(parents=True)
    for p in paths:
        (directory / p.name).symlink_to(p.resolve())
    return directory


def visroute_command() -> list[str]:
    script = Path(sys.executable).with_name("visroute")
    return [str(script)] if script.exists() else [sys.executable, "-m", "visroute.cli"]


# --------------------------------------------------------------------------- (a), (a')


def cli_runner(model_dir: Path, labels_file: Path, templates_file: Path, fast_decode: bool):
    """A function (images dir, expected count) -> None that runs ``visroute classify`` and checks its output."""
    base = visroute_command() + [
        "classify", "--model", f"hf:{model_dir}", "--labels-file", str(labels_file),
        "--templates", str(templates_file), "--top-k", "5", "--json", "--no-progress",
    ] + (["--fast-decode"] if fast_decode else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(images: Path, n_expected: int) -> None:
        proc = subprocess.run(base + [str(images)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"visroute classify failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        n = json.loads(proc.stdout)["n_classified"]
        if n != n_expected:
            raise RuntimeError(f"visroute classify classified {n} images, expected {n_expected}")

    return run


def bench_cli(run, full_dir: Path, n_full: int, small_dir: Path, n_small: int, repeat: int) -> dict:
    """Raw and start-up corrected images/second of the CLI; small and full runs alternate."""
    small, full = Measure(), Measure()
    for _ in range(repeat):
        small.add(clock(lambda: run(small_dir, n_small)))
        full.add(clock(lambda: run(full_dir, n_full)))
    gap = full.seconds - small.seconds  # <= 0 when start-up noise swamps the work: no estimate then
    return {"t_full": full.seconds, "t_small": small.seconds, "raw": n_full / full.seconds,
            "corrected": (n_full - n_small) / gap if gap > 0 else None,
            "foreign": max(small.foreign, full.foreign)}


# --------------------------------------------------------------------------- (b)


def bench_forward(model, paths: list[Path], repeat: int) -> dict:
    from PIL import Image

    items = []
    for p in paths:
        with Image.open(p) as im:
            items.append(model.preprocess(im.convert("RGB")))
    batches = [model.collate(items[i : i + BATCH]) for i in range(0, len(items), BATCH)]
    model.encode_images(model.collate(items[:2]))  # warm-up

    def run():
        for b in batches:
            model.encode_images(b)

    return rate(len(paths), clock(run, repeat))


# --------------------------------------------------------------------------- (c)


def bench_pipeline(model, paths: list[Path], labels: list[str], repeat: int) -> dict:
    from transformers import pipeline

    clf = pipeline("zero-shot-image-classification", model=model.model, image_processor=model.image_processor,
                   tokenizer=model.tokenizer, device="cpu")
    files = [str(p) for p in paths]
    kw = dict(candidate_labels=labels, hypothesis_template=TEMPLATE.replace("{c}", "{}"), batch_size=BATCH)
    clf(files[:1], **kw)  # warm-up

    def run():
        out = clf(files, **kw)
        assert len(out) == len(files)

    return rate(len(paths), clock(run, repeat))


# --------------------------------------------------------------------------- (d), (d2)


def bench_decode_serial(model, paths: list[Path], repeat: int) -> dict:
    from PIL import Image

    proc = model.image_processor

    def run():
        for p in paths:
            with Image.open(p) as im:
                proc(images=im.convert("RGB"), return_tensors="pt")

    return rate(len(paths), clock(run, repeat))


def bench_decode_parallel(model, paths: list[Path], repeat: int) -> dict:
    from visroute.data.images import iter_preprocessed_batches

    def run():
        n = 0
        for indices, _batch, skipped in iter_preprocessed_batches(paths, model.preprocess, model.collate, batch_size=BATCH):
            assert not skipped, skipped
            n += len(indices)
        assert n == len(paths)

    return rate(len(paths), clock(run, repeat))


def rate(n: int, m: Measure) -> dict:
    return {"ips": n / m.seconds, "foreign": m.foreign}


# --------------------------------------------------------------------------- table 2


def bench_head(model, classnames: list[str], templates: list[str], repeat: int) -> dict:
    from visroute.heads import ZeroShotClassifier

    prompts = [t.replace("{c}", c) for c in classnames for t in templates]
    hf, tok = model.model, model.tokenizer

    @torch.inference_mode()
    def tight():
        out = []
        for i in range(0, len(prompts), 1024):
            enc = tok(prompts[i : i + 1024], padding=True, truncation=True, max_length=77, return_tensors="pt")
            feats = hf.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            out.append(feats if isinstance(feats, torch.Tensor) else feats.pooler_output)
        return torch.cat(out)

    def visroute():
        ZeroShotClassifier(model, templates).fit(classnames)

    ZeroShotClassifier(model, templates[:1]).fit(classnames[:8])  # warm-up
    t_tight, t_vis = Measure(), Measure()
    for _ in range(repeat):  # interleaved, best of each
        t_tight.add(clock(tight))
        t_vis.add(clock(visroute))
    return {"prompts": len(prompts), "tight": t_tight.seconds, "visroute": t_vis.seconds,
            "ratio": t_vis.seconds / t_tight.seconds, "cpu_ratio": t_vis.cpu / t_tight.cpu,
            "foreign": max(t_tight.foreign, t_vis.foreign)}


# --------------------------------------------------------------------------- main


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def main(argv: list[str] | None = None) -> int:
    global QUIET_WAIT

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of *.JPEG with labels.csv")
    ap.add_argument("--limit", type=int, default=None,
                    help="images for (a), (b), (c) (default: 200 for b32, all for tiny)")
    ap.add_argument("--sizes", default="tiny,b32", help="comma-separated models: tiny, b32")
    ap.add_argument("--pipeline-labels", type=int, default=10,
                    help="how many class names (a), (a') and (c) classify against")
    ap.add_argument("--small", type=int, default=8, help="images in the CLI start-up run")
    ap.add_argument("--repeat", type=int, default=1, help="timed repeats of (b)-(d2) (best is kept)")
    ap.add_argument("--cli-repeat", type=int, default=2, help="timed repeats of each CLI run (best is kept)")
    ap.add_argument("--head-repeat", type=int, default=2, help="timed repeats of each head build")
    ap.add_argument("--head-b32", action="store_true", help="also time the head build for b32 (slow on CPU)")
    ap.add_argument("--skip-head", action="store_true", help="skip table 2")
    ap.add_argument("--quiet-wait", type=float, default=5.0,
                    help="before each timing, wait up to this many seconds for other processes to go idle (0: never)")
    args = ap.parse_args(argv)
    QUIET_WAIT = args.quiet_wait

    import transformers

    from visroute.models import load_model

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = set(sizes) - set(BUILDERS)
    if unknown:
        ap.error(f"unknown size(s) {sorted(unknown)}; choose from {sorted(BUILDERS)}")
    all_paths = sorted(args.images.glob("*.JPEG"))
    if not all_paths:
        ap.error(f"no *.JPEG files in {args.images}")
    labels = distinct(read_classnames(args.images))[: args.pipeline_labels]
    head_classes = json.loads(CLASSNAMES_JSON.read_text())["imagenet1k"]
    head_templates = json.loads(TEMPLATES_JSON.read_text())["imagenet1k"]

    print(f"# visroute classification throughput ({len(all_paths)} images in {args.images})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"template {TEMPLATE!r}; (a), (a'), (c) classify against the first {len(labels)} class names; "
          f"CLI start-up run on {args.small} images; batch size {BATCH}")

    results: dict[str, dict] = {}
    heads: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_classify-") as tmp_name:
        tmp = Path(tmp_name)
        labels_file = tmp / "labels.txt"
        labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8")
        templates_file = tmp / "templates.txt"
        templates_file.write_text(TEMPLATE + "\n", encoding="utf-8")

        for size in sizes:
            limit = args.limit if args.limit is not None else DEFAULT_LIMIT[size]
            paths = all_paths[:limit] if limit else all_paths
            n_small = min(args.small, len(paths) - 1)
            r = results[size] = {"n": len(paths)}
            t0 = time.perf_counter()
            model_dir = BUILDERS[size](tmp / f"model-{size}")
            model = load_model(f"hf:{model_dir}", device="cpu")
            print(f"\n## {size}: built and loaded in {time.perf_counter() - t0:.1f}s; "
                  f"(a)-(c) on {len(paths)} images, (d) on {len(all_paths)}", flush=True)

            full_dir = link_subset(paths, tmp / f"images-{size}")
            small_dir = link_subset(paths[:n_small], tmp / f"images-{size}-small")
            for key, fast in (("a", False), ("a'", True)):
                run = cli_runner(model_dir, labels_file, templates_file, fast)
                a = r[key] = bench_cli(run, full_dir, len(paths), small_dir, n_small, args.cli_repeat)
                print(f"({key}) visroute{' --fast-decode' if fast else ''}: full {a['t_full']:.2f}s, "
                      f"start-up run {a['t_small']:.2f}s -> raw {a['raw']:.1f} img/s, "
                      f"corrected {fmt(a['corrected'])} img/s  [foreign load {a['foreign']:.2f}]", flush=True)
            steps = [
                ("b", "encode_images only", lambda: bench_forward(model, paths, args.repeat)),
                ("c", "transformers pipeline", lambda: bench_pipeline(model, paths, labels, args.repeat)),
                ("d", "decode+preprocess, 1 process", lambda: bench_decode_serial(model, all_paths, args.repeat)),
                ("d2", "decode+preprocess, visroute DataLoader",
                 lambda: bench_decode_parallel(model, all_paths, args.repeat)),
            ]
            for key, what, bench in steps:
                r[key] = bench()
                print(f"({key}) {what}: {r[key]['ips']:.1f} img/s  [foreign load {r[key]['foreign']:.2f}]", flush=True)

            if not args.skip_head and (size != "b32" or args.head_b32):
                h = heads[size] = bench_head(model, head_classes, head_templates, args.head_repeat)
                print(f"head build, {h['prompts']} prompts: visroute {h['visroute']:.2f}s, "
                      f"tight loop {h['tight']:.2f}s, ratio {h['ratio']:.3f} (by CPU time {h['cpu_ratio']:.3f})"
                      f"  [foreign load {h['foreign']:.2f}]", flush=True)
            del model
            shutil.rmtree(model_dir, ignore_errors=True)

    print_tables(results, heads, len(labels))
    return 0


def print_tables(results: dict[str, dict], heads: dict[str, dict], n_labels: int) -> None:
    sizes = list(results)
    ips = lambda key: lambda r: fmt(r[key]["ips"])  # noqa: E731
    rows = [
        ("images for (a)-(c)", lambda r: str(r["n"])),
        ("(a) visroute classify, raw", lambda r: fmt(r["a"]["raw"])),
        ("(a) visroute classify, start-up corrected", lambda r: fmt(r["a"]["corrected"])),
        ("(a') visroute --fast-decode, raw", lambda r: fmt(r["a'"]["raw"])),
        ("(a') visroute --fast-decode, start-up corrected", lambda r: fmt(r["a'"]["corrected"])),
        ("CLI start-up (small run), s", lambda r: fmt(r["a"]["t_small"], 2)),
        ("(b) encode_images only", ips("b")),
        (f"(c) transformers pipeline ({n_labels} labels)", ips("c")),
        ("(d) decode+preprocess, 1 process", ips("d")),
        ("(d2) decode+preprocess, visroute DataLoader", ips("d2")),
        ("ratio (a)/(b)", lambda r: ratio(r["a"]["corrected"], r["b"]["ips"])),
        ("ratio (a)/(c)", lambda r: ratio(r["a"]["corrected"], r["c"]["ips"])),
        ("ratio (a')/(c)", lambda r: ratio(r["a'"]["corrected"], r["c"]["ips"])),
        ("ratio (d2)/(d)", lambda r: ratio(r["d2"]["ips"], r["d"]["ips"])),
        ("worst foreign load (cores)", lambda r: fmt(max(r[k]["foreign"] for k in ("a", "a'", "b", "c", "d", "d2")), 2)),
    ]
    print("\n## Table 1: images/second (ratios use start-up corrected (a), (a'))\n")
    print("| measurement | " + " | ".join(sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name, cell in rows:
        print(f"| {name} | " + " | ".join(cell(results[s]) for s in sizes) + " |")

    if heads:
        print("\n## Table 2: zero-shot head build, 1000 classes x 80 templates (goal: ratio <= 1.1)\n")
        print("| model | prompts | visroute fit, s | tight loop, s | visroute / tight | same, by CPU time "
              "| foreign load |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for size, h in heads.items():
            print(f"| {size} | {h['prompts']} | {h['visroute']:.2f} | {h['tight']:.2f} | {h['ratio']:.3f} "
                  f"| {h['cpu_ratio']:.3f} | {h['foreign']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
