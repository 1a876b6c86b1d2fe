"""Eval throughput of the local engine against ``--engine ray`` on this machine, and how Ray grows with actors.

Every run is one ``visroute.eval.run.evaluate`` of the same model on the same images (the zero-shot head) with an
empty feature cache, so every image is decoded, preprocessed and encoded: locally (DataLoader workers decode, the
model runs in this process) or on a Ray actor pool started by ``ray.init`` in this process (Ray Data feeds chunks
of ``--batch-size`` images to actors that decode and encode). Throughput is images / ``wall_time_s`` as evaluate
writes it into the result JSON: model loading in this process is excluded (the model is loaded once, up front),
the actors' start-up and model loading are *included* (that is Ray's overhead). ``ray.init`` itself is timed
separately: a cluster is started once, not per evaluation.

Configurations (``--actors 1,2``): ``local``; ``ray-aN`` with N actors whose torch uses the driver's thread count
(the default: CPU features are bit-identical to the local engine's); ``ray-aN-fit`` with N actors of
``cores // N`` threads each (no oversubscription; features equal within float rounding). Each run checks its
feature shards against the local run's (``bit_identical``, ``max_abs_diff``) and its metrics.

The machine may be shared: every run records the 1-minute load average before it and the average number of busy
cores during it (from /proc/stat, all processes). Runs are interleaved over ``--repeats`` so that a change of load
hits every configuration; medians are reported.

Usage::

    python benchmarks/bench_ray.py [--data DIR] [--n 1000] [--model random-tiny] [--actors 1,2] [--repeats 2]
        [--batch-size 64] [--shard-size 256] [--out benchmarks/results/bench_ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def busy_seconds() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def shards(root: Path) -> list[Path]:
    return sorted(root.glob("*/shard-*.safetensors"))


def compare(a: Path, b: Path) -> tuple[bool, float]:
    from safetensors.numpy import load_file

    sa, sb = shards(a), shards(b)
    if [p.name for p in sa] != [p.name for p in sb]:
        return False, float("inf")
    same, diff = True, 0.0
    for x, y in zip(sa, sb):
        same &= x.read_bytes() == y.read_bytes()
        ex, ey = load_file(str(x)), load_file(str(y))
        if len(ex["embeddings"]):
            diff = max(diff, float(abs(ex["embeddings"] - ey["embeddings"]).max()))
    return same, diff


def run_once(name: str, engine, model, ds, args, work: Path) -> dict:
    from visroute.eval.run import EvalOptions, evaluate

    cache_dir, out = work / f"features-{name}", work / f"out-{name}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    load, busy0, t0 = os.getloadavg()[0], busy_seconds(), time.perf_counter()
    doc = evaluate(model, ds, EvalOptions(output=out, batch_size=args.batch_size, shard_size=args.shard_size,
                                          progress=False), cache=engine.feature_cache(cache_dir))
    wall = time.perf_counter() - t0
    v = doc["visroute"]
    return {"config": name, "images": len(ds), "wall_time_s": v["wall_time_s"], "feature_time_s": v["feature_time_s"],
            "images_per_s": len(ds) / v["wall_time_s"], "acc1": doc["metrics"]["acc1"],
            "images_encoded": v["feature_cache"]["images_encoded"], "load_avg_1m_before": load,
            "busy_cores_during": (busy_seconds() - busy0) / wall, "cache": str(cache_dir)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-test"))
    ap.add_argument("--n", type=int, default=1000, help="images (evenly spread over the dataset)")
    ap.add_argument("--model", default="random-tiny")
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_ray.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ.setdefault("VISROUTE_CACHE", str(work / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    import torch

    from visroute.data.datasets import load_dataset, spread_subset
    from visroute.engine import EngineOptions, make_engine
    from visroute.models import load_model

    cores = len(os.sched_getaffinity(0))
    model = load_model(args.model, device="cpu")
    ds = spread_subset(load_dataset(args.data), args.n)
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    engines = {"local": make_engine("local")}
    for a in (int(x) for x in args.actors.split(",")):
        engines[f"ray-a{a}"] = make_engine(EngineOptions(engine="ray", actors=a, num_cpus=cores / a))
        fit = max(1, cores // a)
        if fit != torch.get_num_threads():
            engines[f"ray-a{a}-fit"] = make_engine(EngineOptions(engine="ray", actors=a, num_cpus=cores / a, threads=fit))
    runs = []
    try:
        for r in range(args.repeats):
            for name, engine in engines.items():
                row = run_once(name, engine, model, ds, args, work)
                row["repeat"] = r
                if name != "local":
                    row["bit_identical"], row["max_abs_diff"] = compare(Path(row["cache"]), work / "features-local")
                    row["same_acc1"] = row["acc1"] == next(x["acc1"] for x in runs if x["config"] == "local")
                runs.append(row)
                print(f"[{r}] {name:12s} {row['images_per_s']:8.1f} img/s  wall {row['wall_time_s']:6.1f}s  "
                      f"load {row['load_avg_1m_before']:.1f}  busy cores {row['busy_cores_during']:.2f}"
                      + (f"  identical={row['bit_identical']} max|diff|={row['max_abs_diff']:.1e}" if name != "local" else ""),
                      flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    med = {n: statistics.median(x["images_per_s"] for x in runs if x["config"] == n) for n in engines}
    summary = {n: {"median_images_per_s": v, "ratio_to_local": v / med["local"]} for n, v in med.items()}
    print(f"\nray.init: {ray_init_s:.1f}s (once per session); {len(ds)} images, model {args.model}, {cores} cores, "
          f"torch threads {torch.get_num_threads()}")
    for n, s in summary.items():
        print(f"{n:12s} median {s['median_images_per_s']:8.1f} img/s   x{s['ratio_to_local']:.2f} of local")
    doc = {"model": args.model, "data": args.data, "images": len(ds), "batch_size": args.batch_size,
           "shard_size": args.shard_size, "cores": cores, "torch_threads": torch.get_num_threads(),
           "ray_version": ray.__version__, "ray_init_s": ray_init_s, "runs": runs, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
