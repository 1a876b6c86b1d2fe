"""Eval throughput of the local engine against ``--engine ray`` on this machine, and how Ray grows with actors.

Every run is one ``visroute.eval.run.evaluate`` of the same model on the same images (the zero-shot head) with an
empty feature cache, so every image is decoded, preprocessed and encoded: locally (DataLoader workers decode, the
model runs in this process) or on a Ray actor pool started by ``ray.init`` in this process (Ray Data feeds chunks
of ``--batch-size`` images to actors that decode and encode). Throughput is images / ``wall_time_s`` as evaluate
writes it into the result JSON: model loading in this process is excluded (the model is loaded once, up front),
the actors' start-up and model loading are *included* (that is Ray's overhead). ``ray.init`` itself is timed
separately: a cluster is started once, not per evaluation.

Each configuration runs at two sizes (``--sizes 500,3000``), which separates a fixed start-up cost from the
steady-state rate: ``marginal img/s = (n2 - n1) / (t2 - t1)`` and ``start-up s = t1 - n1 / marginal``. Ray's
start-up is dominated by its fresh actor processes importing torch / transformers and loading the model; the
marginal rate is what a long evaluation converges to. Both ratios to the local engine are printed.

Configurations (``--actors 1,2``): ``local``; ``ray-aN`` with N actors whose torch uses the driver's thread count
(the default: CPU features are bit-identical to the local engine's); ``ray-aN-fit`` with N actors of
``cores // N`` threads each (no oversubscription) when that differs. Each run checks its feature shards against
the local run's of the same size (``bit_identical``, ``max_abs_diff``) and its metrics.

Wall time on a shared machine depends on the other users, so every run also measures the CPU seconds of this
process and all its descendants (DataLoader workers, Ray's daemons and actors): CPU ms per image, and its ratio
to the local engine's (``cpu efficiency``; 1.0 = Ray costs no extra CPU), split the same way into start-up and
marginal parts. On a node that is CPU-bound and not shared, throughput is cores / CPU per image.

The machine may be shared: every run records the 1-minute load average before it and the average number of busy
cores during it (from /proc/stat, all processes). Runs are interleaved over ``--repeats`` so that a change of load
hits every configuration; medians are reported.

``--device cuda --num-gpus 0.5`` measures GPU actors the same way (the local run then uses the GPU too).

Usage::

    python benchmarks/bench_ray.py [--data DIR] [--sizes 500,3000] [--model random-tiny] [--actors 1,2]
        [--repeats 2] [--batch-size 64] [--shard-size 256] [--device cpu] [--num-gpus 0]
        [--out benchmarks/results/bench_ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def busy_seconds() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class TreeCPU(threading.Thread):
    """CPU seconds (user + system) used by this process and all its descendants (DataLoader workers, Ray's
    daemons and actors) while running: every process is sampled every ``interval`` s, and a process that exits
    counts up to its last sample. Unlike wall time this hardly depends on what other users of the machine do."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval, self.seen, self.base = interval, {}, {}
        self._halt = threading.Event()
        for key, cpu in self._sample():
            self.base[key] = cpu

    @staticmethod
    def _sample():
        import psutil

        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                yield (p.pid, p.create_time()), t.user + t.system  # children_*: reaped ones, sampled already
            except psutil.Error:
                pass

    def run(self) -> None:
        while not self._halt.is_set():
            for key, cpu in self._sample():
                self.seen[key] = max(cpu, self.seen.get(key, 0.0))
            self._halt.wait(self.interval)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        for key, cpu in self._sample():
            self.seen[key] = max(cpu, self.seen.get(key, 0.0))
        return sum(cpu - self.base.get(key, 0.0) for key, cpu in self.seen.items())


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
    from visroute.eval.run import RunOptions, evaluate

    cache_dir, out = work / f"features-{name}-{len(ds)}", work / f"out-{name}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    load, busy0, t0 = os.getloadavg()[0], busy_seconds(), time.perf_counter()
    cpu = TreeCPU()
    cpu.start()
    doc = evaluate(model, ds, RunOptions(output=out, batch_size=args.batch_size, shard_size=args.shard_size,
                                         progress=False, cache=engine.feature_cache(cache_dir)))
    wall = time.perf_counter() - t0
    cpu_s = cpu.stop()
    v = doc["visroute"]
    return {"config": name, "images": len(ds), "wall_time_s": v["wall_time_s"], "feature_time_s": v["feature_time_s"],
            "images_per_s": len(ds) / v["wall_time_s"], "acc1": doc["metrics"]["acc1"],
            "images_encoded": v["feature_cache"]["images_encoded"], "load_avg_1m_before": load,
            "busy_cores_during": (busy_seconds() - busy0) / wall, "cpu_s": cpu_s,
            "cpu_ms_per_image": 1000 * cpu_s / len(ds), "cache": str(cache_dir)}


def engines_for(args, cores: int) -> dict:
    import torch

    from visroute.engine import EngineOptions, make_engine

    engines = {"local": make_engine("local")}
    gpu = args.num_gpus > 0
    for a in (int(x) for x in args.actors.split(",")):
        per = {"num_gpus": args.num_gpus, "num_cpus": 1.0} if gpu else {"num_cpus": cores / a}
        engines[f"ray-a{a}"] = make_engine(EngineOptions(engine="ray", actors=a, **per))
        fit = max(1, cores // a)
        if not gpu and fit != torch.get_num_threads():
            engines[f"ray-a{a}-fit"] = make_engine(EngineOptions(engine="ray", actors=a, threads=fit, **per))
    return engines


def summarise(runs: list[dict], names, n1: int, n2: int) -> dict:
    out = {}
    for name in names:
        t = {n: statistics.median(r["wall_time_s"] for r in runs if r["config"] == name and r["images"] == n)
             for n in (n1, n2)}
        # None when the larger run was not slower: start-up noise swamped the difference (take larger sizes)
        marginal = (n2 - n1) / (t[n2] - t[n1]) if t[n2] > t[n1] else None
        c = {n: statistics.median(r["cpu_s"] for r in runs if r["config"] == name and r["images"] == n)
             for n in (n1, n2)}
        out[name] = {"end_to_end_images_per_s": n2 / t[n2], "marginal_images_per_s": marginal,
                     "startup_s": t[n1] - n1 / marginal if marginal else None, "cpu_ms_per_image": 1000 * c[n2] / n2,
                     "marginal_cpu_ms_per_image": 1000 * (c[n2] - c[n1]) / (n2 - n1),
                     "startup_cpu_s": c[n1] - n1 * (c[n2] - c[n1]) / (n2 - n1)}
    for name in names:
        for k in ("end_to_end_images_per_s", "marginal_images_per_s"):
            a, b = out[name][k], out["local"][k]
            out[name][k.replace("images_per_s", "ratio_to_local")] = a / b if a and b else None
        # CPU efficiency: local CPU per image / this engine's (1.0 = no overhead; a CPU-bound node's throughput)
        for k in ("cpu_ms_per_image", "marginal_cpu_ms_per_image"):
            out[name][k.replace("ms_per_image", "efficiency_to_local")] = out["local"][k] / out[name][k]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-test"))
    ap.add_argument("--sizes", default="500,3000", help="two image counts (evenly spread over the dataset)")
    ap.add_argument("--model", default="random-tiny")
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--device", default="cpu", help="the local engine's device (actors: cuda when --num-gpus > 0)")
    ap.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_ray.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ.setdefault("VISROUTE_CACHE", str(work / "cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    import torch

    from visroute.data.datasets import load_dataset, spread_subset
    from visroute.models import load_model

    cores = len(os.sched_getaffinity(0))
    n1, n2 = (int(x) for x in args.sizes.split(","))
    model = load_model(args.model, device=args.device)
    data = {n: spread_subset(load_dataset(args.data), n) for n in (n1, n2)}
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    engines = engines_for(args, cores)
    runs = []
    try:
        for r in range(args.repeats):
            for n in (n1, n2):
                for name, engine in engines.items():
                    row = run_once(name, engine, model, data[n], args, work)
                    row["repeat"] = r
                    if name != "local":
                        row["bit_identical"], row["max_abs_diff"] = compare(Path(row["cache"]), work / f"features-local-{n}")
                        row["same_acc1"] = row["acc1"] == next(x["acc1"] for x in reversed(runs)
                                                               if x["config"] == "local" and x["images"] == n)
                    runs.append(row)
                    print(f"[{r}] {name:12s} n={n:<6d} {row['images_per_s']:8.1f} img/s  wall {row['wall_time_s']:6.1f}s"
                          f"  cpu {row['cpu_ms_per_image']:5.2f} ms/img"
                          f"  load {row['load_avg_1m_before']:.1f}  busy cores {row['busy_cores_during']:.2f}"
                          + (f"  identical={row['bit_identical']} max|diff|={row['max_abs_diff']:.1e}"
                             if name != "local" else ""), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(runs, list(engines), n1, n2)
    print(f"\nray.init {ray_init_s:.1f}s (once per session); model {args.model} on {args.device}; {cores} cores, "
          f"torch threads {torch.get_num_threads()}; sizes {n1} and {n2}")
    for name, s in summary.items():
        f = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"{name:12s} end-to-end ({n2}) {s['end_to_end_images_per_s']:7.1f} img/s x{s['end_to_end_ratio_to_local']:.2f}"
              f" | marginal {f(s['marginal_images_per_s'], '7.1f')} img/s x{f(s['marginal_ratio_to_local'], '.2f')}"
              f" | start-up {f(s['startup_s'], '5.1f')}s")
        print(f"{'':12s} cpu {s['cpu_ms_per_image']:5.2f} ms/img x{s['cpu_efficiency_to_local']:.2f}"
              f" | marginal cpu {s['marginal_cpu_ms_per_image']:5.2f} ms/img x{s['marginal_cpu_efficiency_to_local']:.2f}"
              f" | start-up cpu {s['startup_cpu_s']:5.1f}s")
    doc = {"model": args.model, "device": args.device, "num_gpus_per_actor": args.num_gpus, "data": args.data,
           "sizes": [n1, n2], "batch_size": args.batch_size, "shard_size": args.shard_size, "cores": cores,
           "torch_threads": torch.get_num_threads(), "ray_version": ray.__version__, "ray_init_s": ray_init_s,
           "runs": runs, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
