"""Throughput and peak memory of ``visroute eval`` (zero-shot head, feature cache), run as a subprocess.

Model: ``--model`` (default ``random-tiny``, visroute's tiny *randomly initialised* CLIP built locally:
32-wide, 2-layer towers, but the real CLIP preprocessing to 224x224). Accuracies are therefore at chance
level and the image tower costs almost nothing: the numbers measure visroute's pipeline (JPEG decoding +
preprocessing in DataLoader workers, feature-cache shards, head, result files), not a real model's speed.
The model is built once, up front, into a directory that every fresh ``VISROUTE_CACHE`` links to as
``models/``, so "empty cache" means "no cached *features*", and no run pays for building the model.

1. Throughput on the ``--data`` ImageFolder (default: the 10k CIFAR-10 test JPEGs, 32x32), three runs
   of ``visroute eval -m MODEL -d DATA --output DIR --no-progress`` sharing one fresh ``VISROUTE_CACHE``:

   * ``first``      - empty feature cache: every image is decoded, preprocessed and encoded;
   * ``cached``     - same cache, another ``--output``: all shards reused;
   * ``templates``  - same cache, another ``--output`` and a different ``--templates`` file: a new head,
                      but the image features are still all reused (``images_encoded`` should be 0).

   For each: eval wall time and images/s as written by visroute in the result JSON
   (``visroute.wall_time_s`` - inside ``evaluate()``, model loading excluded - and
   ``visroute.images_per_s``), ``feature_time_s``, ``feature_cache.images_encoded`` /
   ``shards_reused``, the whole process's wall time (interpreter start-up, imports, model load
   included), and speed-ups relative to ``first``.

2. Peak memory of an uncached eval on the 10k images (the ``first`` run above) against one on ``--big``
   images (default 100,000; 0 skips it): an ImageFolder of symlinks built under the work directory, each
   class folder holding ``r{k}_{name}`` -> the original file for k = 0, 1, ... (10 rounds for 100k), so
   nothing is copied. Each run gets its own fresh ``VISROUTE_CACHE``. Memory is measured two ways:

   * ``/usr/bin/time -f %M`` wraps the CLI: the kernel's exact RSS high-water mark of the *largest single
     process* of the tree (wait4 ``ru_maxrss`` is a maximum over the waited-for processes, not a sum);
   * a psutil sampler in this process, every ``--poll`` s (default 0.2): the RSS of the main eval process,
     and the sum of RSS and of PSS over the main process and all its descendants (DataLoader workers).
     RSS sums count pages shared between the forked workers and the parent more than once; PSS divides
     shared pages among their sharers, so ``tree PSS`` is the better estimate of the tree's real
     footprint. Sampling can miss short spikes between polls.

   The ratio big/10k of each peak is printed (goal: ~1, memory flat in the number of images), and the
   main process's RSS over time (at 10%, 25%, 50%, 75%, 90% of the run and its last sample) is written to
   the work directory (``rss_timeline_*.json``) and summarised, to show where memory grows if it does.

   ``--budget-min`` (default 20): if the big run, projected from the first run's images/s, would end the
   benchmark later than that, ``--big`` is reduced to a multiple of 10k (at least 20k) and a note says so.
   On an idle 2-core machine the whole benchmark with 100k images takes about 7-8 minutes.

The machine may be shared. Every run is printed with the 1-minute load average read just before it and
the "foreign load": the average number of cores that processes *other than the run* kept busy during it
(busy CPU time from /proc/stat minus the run's user+system time, from /usr/bin/time, over its wall time).
Runs at a foreign load well above 0 are pessimistic for throughput (memory is hardly affected).

Usage::

    python benchmarks/bench_eval.py [--data DIR] [--model random-tiny] [--big 100000] [--budget-min 20]
        [--workdir DIR] [--batch-size N] [--workers N] [--shard-size N] [--poll 0.2] [--keep] [--smoke]

psutil must be importable (it is in the dev venv); ``/usr/bin/time`` is used when present.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory import MemPeaks, TreeSampler  # noqa: E402

ALT_TEMPLATES = [
    "a blurry photo of a {c}.",
    "a pixelated photo of the {c}.",
    "itap of a {c}.",
]


# --------------------------------------------------------------------------- machine load


def machine_busy_seconds() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def loadavg1() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------- one CLI run


@dataclass
class Run:
    name: str
    n_images: int
    proc_wall: float
    rc: int
    doc: dict
    peaks: MemPeaks
    time_maxrss: int | None  # bytes, /usr/bin/time %M
    cpu_s: float | None
    load_before: float
    foreign: float | None

    @property
    def v(self) -> dict:
        return self.doc.get("visroute", {})

    @property
    def wall(self) -> float:
        return float(self.v.get("wall_time_s", float("nan")))

    @property
    def ips(self) -> float:
        return float(self.v.get("images_per_s") or float("nan"))

    @property
    def encoded(self) -> int:
        return int(self.v.get("feature_cache", {}).get("images_encoded", -1))

    @property
    def reused(self) -> int:
        return int(self.v.get("feature_cache", {}).get("shards_reused", -1))

    @property
    def n_shards(self) -> int:
        return int(self.v.get("feature_cache", {}).get("n_shards", -1))


def run_eval(name: str, args, data: Path, cache: Path, output: Path, workdir: Path, templates: Path | None = None) -> Run:
    cmd = [sys.executable, "-m", "visroute.cli", "eval", "-m", args.model, "-d", str(data),
           "--output", str(output), "--no-progress"]
    for flag, val in (("--batch-size", args.batch_size), ("--workers", args.workers), ("--shard-size", args.shard_size)):
        if val is not None:
            cmd += [flag, str(val)]
    if templates is not None:
        cmd += ["--templates", str(templates)]
    time_file = workdir / f"time_{name}.txt"
    use_time = os.access("/usr/bin/time", os.X_OK)
    full = (["/usr/bin/time", "-f", "%M %U %S %e", "-o", str(time_file)] + cmd) if use_time else cmd
    env = dict(os.environ, VISROUTE_CACHE=str(cache), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    log = open(workdir / f"log_{name}.txt", "w")
    load_before = loadavg1()
    busy0 = machine_busy_seconds()
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = TreeSampler(proc.pid, args.poll, skip_root=use_time)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    busy = machine_busy_seconds() - busy0
    peaks = sampler.stop()
    log.close()
    maxrss = cpu = None
    if use_time and time_file.is_file():
        try:
            m, u, s, _e = time_file.read_text().strip().splitlines()[-1].split()
            maxrss, cpu = int(m) * 1024, float(u) + float(s)
        except ValueError:
            pass
    if rc != 0:
        sys.stderr.write((workdir / f"log_{name}.txt").read_text()[-3000:])
        raise SystemExit(f"{name}: visroute eval exited with {rc} (log: {workdir / f'log_{name}.txt'})")
    docs = glob.glob(str(output / "*.json"))
    if len(docs) != 1:
        raise SystemExit(f"{name}: expected one result JSON in {output}, found {docs}")
    doc = json.loads(Path(docs[0]).read_text())
    foreign = (busy - cpu) / wall if cpu is not None and wall > 0 else None
    (workdir / f"rss_timeline_{name}.json").write_text(json.dumps(
        {"columns": ["t_s", "main_rss", "tree_rss", "tree_pss", "n_procs"], "rows": peaks.timeline}))
    r = Run(name, int(doc["visroute"]["n_images"]), wall, rc, doc, peaks, maxrss, cpu, load_before, foreign)
    print(f"  {name:<10} {r.n_images:>7} images  eval wall {r.wall:8.1f} s  process {wall:8.1f} s  "
          f"{r.ips:8.1f} img/s  encoded {r.encoded:>7}  shards reused {r.reused}/{r.n_shards}  "
          f"peak main RSS {mb(peaks.main_rss)}  tree PSS {mb(peaks.tree_pss)}  "
          f"load1 {load_before:.2f}  foreign {fmt(foreign, '.2f')}", flush=True)
    return r


# --------------------------------------------------------------------------- helpers


def mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.0f} MiB"


def fmt(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def ratio(a, b) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}"


def fresh_cache(workdir: Path, models_dir: Path, name: str) -> Path:
    d = workdir / f"cache-{name}"
    d.mkdir()
    (d / "models").symlink_to(models_dir, target_is_directory=True)
    return d


def build_model(model: str, models_cache: Path) -> None:
    code = "import sys; from visroute.models import load_model; load_model(sys.argv[1], device='cpu')"
    env = dict(os.environ, VISROUTE_CACHE=str(models_cache), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-c", code, model], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build_big_folder(src: Path, dst: Path, n_target: int) -> int:
    """ImageFolder of symlinks ``dst/<class>/r{k}_{name}`` -> ``src/<class>/{name}``, ~n_target in all."""
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {c: sorted(f.name for f in (src / c).iterdir() if f.is_file()) for c in classes}
    total = sum(len(v) for v in files.values())
    made = 0
    for c in classes:
        want = round(n_target * len(files[c]) / total)
        (dst / c).mkdir(parents=True)
        for j in range(want):
            k, name = divmod(j, len(files[c]))
            os.symlink(src / c / files[c][name], dst / c / f"r{k}_{files[c][name]}")
        made += want
    return made


def timeline_summary(r: Run) -> str:
    rows = r.peaks.timeline
    if not rows:
        return "no samples"
    t_end = rows[-1][0] or 1.0
    out = []
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        row = min(rows, key=lambda x: abs(x[0] - q * t_end))
        out.append(f"{int(q * 100)}%: {row[1] / 2**20:.0f}")
    out.append(f"last: {rows[-1][1] / 2**20:.0f}")
    return ", ".join(out) + " MiB"


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test",
                    help="ImageFolder (default: ../shared/data/cifar10-test beside the repository, 10k CIFAR-10 test)")
    ap.add_argument("--model", default="random-tiny")
    ap.add_argument("--big", type=int, default=100_000, help="images in the symlinked big set (0: skip)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed unless --keep")
    ap.add_argument("--batch-size", type=int, default=None, help="passed to visroute eval (default: its own)")
    ap.add_argument("--workers", type=int, default=None, help="passed to visroute eval (default: its own)")
    ap.add_argument("--shard-size", type=int, default=None, help="passed to visroute eval (default: its own)")
    ap.add_argument("--budget-min", type=float, default=20.0,
                    help="if the big run, projected from the first run's images/s, would end the benchmark later "
                         "than this many minutes, --big is reduced (to a multiple of 10k, at least 20k) and a note "
                         "is printed; 0: never reduce")
    ap.add_argument("--poll", type=float, default=0.2, help="psutil sampling interval, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--smoke", action="store_true", help="16 images of 2 classes, no big set: a check that the "
                                                         "benchmark runs, in seconds (not a measurement)")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_eval-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # a small ImageFolder of links into --data
        small = workdir / "smoke-data"
        for c in sorted(p for p in args.data.iterdir() if p.is_dir())[:2]:
            (small / c.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(c.iterdir())[:8]:
                os.symlink(f.resolve(), small / c.name / f.name)
        args.data, args.big = small, 0
    t_all = time.perf_counter()
    print(f"visroute eval benchmark: model {args.model}, data {args.data}, workdir {workdir}")
    print(f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; psutil {psutil.__version__}; "
          f"/usr/bin/time {'yes' if os.access('/usr/bin/time', os.X_OK) else 'no'}")
    if args.model.startswith("random-"):
        print(f"note: {args.model} is a tiny randomly initialised CLIP built locally (chance-level accuracy); "
              "it measures the pipeline (decode, preprocess to 224x224, cache, head, result files), not a real model.")
    try:
        models_cache = workdir / "model-cache"
        build_model(args.model, models_cache)
        models_dir = models_cache / "models"
        templates = workdir / "alt-templates.txt"
        templates.write_text("\n".join(ALT_TEMPLATES) + "\n")

        print("\n1. throughput (one shared VISROUTE_CACHE, features empty at first)")
        cache = fresh_cache(workdir, models_dir, "small")
        first = run_eval("first", args, args.data, cache, workdir / "out-first", workdir)
        cached = run_eval("cached", args, args.data, cache, workdir / "out-cached", workdir)
        tmpl = run_eval("templates", args, args.data, cache, workdir / "out-templates", workdir, templates)

        big = None
        if args.big > 0 and args.budget_min > 0:
            elapsed = time.perf_counter() - t_all
            overhead = max(0.0, first.proc_wall - first.wall)  # start-up, imports, model load
            per_image = first.wall / first.n_images
            room = args.budget_min * 60 - elapsed - overhead - 30
            if args.big * per_image > room:
                unit = 10_000
                fit = max(2 * unit, int(room / per_image) // unit * unit)
                if fit < args.big:
                    print(f"\nnote: {args.big:,} images at the first run's {1 / per_image:.0f} img/s would take "
                          f"~{args.big * per_image / 60:.0f} min, past --budget-min {args.budget_min:g} "
                          f"({elapsed / 60:.1f} min used); using --big {fit:,} instead")
                    args.big = fit
        if args.big > 0:
            big_dir = workdir / f"big-{args.big}"
            t = time.perf_counter()
            n = build_big_folder(args.data, big_dir, args.big)
            print(f"\n2. memory: uncached eval on {n:,} images (symlink ImageFolder {big_dir}, built in "
                  f"{time.perf_counter() - t:.1f} s), fresh VISROUTE_CACHE")
            big = run_eval("big", args, big_dir, fresh_cache(workdir, models_dir, "big"), workdir / "out-big", workdir)

        print("\nmain-process RSS over each uncached run (share of its duration):")
        for r in [first] + ([big] if big else []):
            print(f"  {r.name:<6} {timeline_summary(r)}  ({r.peaks.samples} samples, up to {r.peaks.max_procs} processes)")

        print("\n### Throughput (visroute eval, zero-shot head, default templates unless noted)\n")
        print("| run | images | images encoded | shards reused | eval wall (s) | images/s | speed-up vs first "
              "| process wall (s) | process speed-up | load1 / foreign |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in (first, cached, tmpl):
            label = {"first": "first (empty cache)", "cached": "cached re-run",
                     "templates": "cached, other --templates"}[r.name]
            print(f"| {label} | {r.n_images:,} | {r.encoded:,} | {r.reused}/{r.n_shards} | {r.wall:.2f} | {r.ips:,.0f} "
                  f"| {ratio(first.wall, r.wall)} | {r.proc_wall:.1f} | {ratio(first.proc_wall, r.proc_wall)} "
                  f"| {r.load_before:.2f} / {fmt(r.foreign, '.2f')} |")
        print(f"\nfeature time (first): {first.v.get('feature_time_s', float('nan')):.2f} s; "
              f"seconds per image: {first.v.get('seconds_per_image')}; acc1 first/cached/templates: "
              f"{first.doc['metrics']['acc1']:.4f} / {cached.doc['metrics']['acc1']:.4f} / {tmpl.doc['metrics']['acc1']:.4f}")

        print("\n### Peak memory, uncached eval\n")
        print("| run | images | eval wall (s) | images/s | /usr/bin/time max RSS (largest process) | main RSS (sampled) "
              "| tree RSS sum | tree PSS sum | processes | load1 / foreign |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        rows = [first] + ([big] if big else [])
        for r in rows:
            print(f"| {r.name if r.name != 'first' else '10k (first)'} | {r.n_images:,} | {r.wall:.1f} | {r.ips:,.0f} "
                  f"| {mb(r.time_maxrss)} | {mb(r.peaks.main_rss)} | {mb(r.peaks.tree_rss)} | {mb(r.peaks.tree_pss)} "
                  f"| {r.peaks.max_procs} | {r.load_before:.2f} / {fmt(r.foreign, '.2f')} |")
        if big:
            print(f"| **ratio big/10k** | {big.n_images / first.n_images:.1f}x | | | {ratio(big.time_maxrss, first.time_maxrss)} "
                  f"| {ratio(big.peaks.main_rss, first.peaks.main_rss)} | {ratio(big.peaks.tree_rss, first.peaks.tree_rss)} "
                  f"| {ratio(big.peaks.tree_pss, first.peaks.tree_pss)} | | |")
        print(f"\ntotal benchmark time {time.perf_counter() - t_all:.0f} s")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import write_results

        if not args.smoke:
            write_results("bench_eval", {"model": args.model, "runs": [
                {"run": r.name, "images": r.n_images, "images_encoded": r.encoded, "eval_wall_s": r.wall,
                 "images_per_s": r.ips, "process_wall_s": r.proc_wall,
                 "max_rss_mib": r.time_maxrss and r.time_maxrss / 2**20,
                 "tree_pss_mib": r.peaks.tree_pss and r.peaks.tree_pss / 2**20, "load1": r.load_before,
                 "foreign_load": r.foreign}
                for r in [first, cached, tmpl] + ([big] if big else [])]})
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")


if __name__ == "__main__":
    main()
