"""``/v1/classify`` throughput at concurrency 32, side by side with in-process classification (the limit) and a
naive FastAPI server that calls the transformers zero-shot pipeline per request (the peer).

A random-weight CLIP (``--size tiny``, the default, or ``b32``: ViT-B/32's shapes) is written to a temporary
folder. The same N ImageNet-sample JPEGs are classified against the same class names and template:

  (a) in process: ``visroute.batch_classify.iter_classify`` (what ``visroute classify`` runs), after a warm-up;
  (b) ``visroute serve`` (its own process, uvicorn on 127.0.0.1), batching on;
  (c) ``visroute serve --workers 2``;
  (d) the naive peer (``naive_serve.py``): one transformers pipeline call per request;
  (e) ``visroute serve`` with batching off (``max_batch_size: 1``);
  (f) where Ray Serve is installed: ``visroute serve --engine ray --replicas 2`` (reported against (c)).

Beside each throughput, CPU time per image: in process (with its DataLoader workers), in the server process (with
its children), and in the load client, which shares the machine's cores with the server, so the in-process figure is
a limit the server can only reach where the client's CPU is not taken from it.

Goals: (b) >= 0.9 x (a) and >= 2 x (d). Server overhead per request (sequential, concurrency 1): the client's
latency minus the model work the server reports. Requests carry the image as base64 JSON. The machine may be shared:
the load average is recorded beside every figure. ``--smoke`` runs a few requests of each kind in seconds (a check
that the script works, not a measurement). Results: benchmarks/results/bench_serve.json.

Usage::

    python benchmarks/bench_serve.py [--size tiny|b32] [--n 192] [--concurrency 32] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ.get("VISROUTE_SHARED_DATA", ROOT.parent / "shared" / "data"))
TEMPLATE = "a photo of a {c}."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def class_names(n: int) -> list[str]:
    names = json.loads((DATA / "classnames" / "en_classnames.json").read_text())["imagenet1k"]
    return list(dict.fromkeys(names))[:n]


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process and its reaped children, or of process ``pid`` and its
    live children: the machine's cores are shared by the client and the server, so CPU per image says where the
    time goes whatever the wall clock does."""
    if pid is None:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for q in procs:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.Error:  # it ended meanwhile
            pass
    return total


def in_process(model_dir: Path, paths: list[Path], labels: list[str], batch: int, device: str) -> dict:
    """The better of decoding in DataLoader workers (one per core, as `visroute classify`) and in the main process."""
    from visroute.batch_classify import iter_classify
    from visroute.pipeline import PipelineSpec, build_pipeline

    spec = PipelineSpec(head="zeroshot", model=f"hf:{model_dir}", templates=(TEMPLATE,), device=device)
    head = build_pipeline(spec).classifier(labels)
    for _ in iter_classify(head, paths[:batch], 5, batch, 0):  # warm-up
        pass
    out = {}
    for name, workers in (("workers_default", None), ("workers_0", 0)):
        t, c = time.perf_counter(), cpu_s()
        n = sum(len(preds) for preds, _ in iter_classify(head, paths, 5, batch, workers))
        wall = time.perf_counter() - t
        out[name] = {"images": n, "wall_s": round(wall, 3), "images_per_s": round(n / wall, 2),
                     "cpu_ms_per_image": round((cpu_s() - c) / n * 1000, 2)}
    return {**out, "images_per_s": max(v["images_per_s"] for v in out.values())}


def start_server(model_dir: Path, labels: list[str], work: Path, max_batch: int, wait_ms: float, log: Path,
                 device: str, workers: int = 1, extra: tuple = ()):
    cfg = {"models": [{"name": "m", "model": f"hf:{model_dir}", "device": device, "templates": [TEMPLATE]}],
           "label_sets": [{"name": "bench", "labels": labels}],
           "batching": {"max_batch_size": max_batch, "max_wait_ms": wait_ms, "max_queue": 1024},
           "limits": {"request_timeout_s": 600}}
    path = work / f"serve-{max_batch}.yaml"
    path.write_text(json.dumps(cfg))
    port = free_port()
    cmd = [sys.executable, "-m", "visroute.cli", "serve", "--open", "--port", str(port), "--config", str(path),
           "--workers", str(workers), *extra]
    return _wait(subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}), port, log)


def start_naive(model_dir: Path, labels: list[str], work: Path, log: Path):
    (work / "labels.json").write_text(json.dumps(labels))
    port = free_port()
    cmd = [sys.executable, str(HERE / "naive_serve.py"), str(model_dir), str(work / "labels.json"), str(port)]
    return _wait(subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"}), port, log)


def _wait(proc, port: int, log: Path):
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{log.name}: the server exited: {log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{log.name}: the server did not become ready")


def serve_run(url: str, images: list[bytes], n: int, concurrency: int, body: str = "json",
              server_pid: int | None = None) -> dict:
    import base64

    from visroute.serve.loadtest import run_load

    encoded = [base64.b64encode(im).decode() for im in images] if body == "json" else []

    def req(i: int) -> dict:
        if body == "json":  # the image as base64 in JSON: cheap to build and to parse on both sides
            return {"path": "/v1/classify", "json": {"image": encoded[i % len(encoded)], "top_k": 5}}
        return {"path": "/v1/classify", "files": {"image": ("x.jpg", images[i % len(images)], "image/jpeg")},
                "data": {"top_k": "5"}}

    run_load(url, req, min(n, 2 * concurrency), concurrency)  # warm-up: first forward passes, connections
    server0, client0 = (cpu_s(server_pid) if server_pid else 0.0), time.process_time()
    r = run_load(url, req, n, concurrency, time_limit_s=1800)
    server1, client1 = (cpu_s(server_pid) if server_pid else 0.0), time.process_time()
    if r.errors:
        raise SystemExit(f"{len(r.errors)} errors, e.g. {r.errors[0]}")
    out = r.summary()
    out["images_per_s"] = out.pop("throughput_rps")
    out["load1"] = round(os.getloadavg()[0], 2)
    out["client_cpu_ms_per_request"] = round((client1 - client0) / n * 1000, 2)
    if server_pid:
        out["server_cpu_ms_per_request"] = round((server1 - server0) / n * 1000, 2)
    if not r.timings:  # the naive peer reports no timings
        return out
    out["mean_batch_size"] = round(float(np.mean([t["batch_size"] for t in r.timings])), 2)
    work = [t["decode_ms"] + t["forward_ms"] + t["head_ms"] for t in r.timings]
    out["server_overhead_p50_ms"] = round(float(np.median([t["client_ms"] - w for t, w in zip(r.timings, work)])), 2)
    out["outside_handler_p50_ms"] = round(float(np.median([t["client_ms"] - t["total_ms"] for t in r.timings])), 2)
    return out


def ray_serve_installed() -> bool:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("b32", "tiny"), default="tiny")
    ap.add_argument("--n", type=int, default=192, help="requests (images) per measurement")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32, help="in-process batch size and the server's max_batch_size")
    ap.add_argument("--wait-ms", type=float, default=5.0)
    ap.add_argument("--labels", type=int, default=100, help="ImageNet class names to classify against")
    ap.add_argument("--overhead-n", type=int, default=40, help="sequential requests for the overhead figure")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (both sides use it)")
    ap.add_argument("--body", choices=("json", "multipart"), default="json", help="how requests carry the image")
    ap.add_argument("--smoke", action="store_true", help="a few requests of each kind, in seconds (not a measurement)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.n, args.concurrency, args.batch, args.labels, args.overhead_n = "tiny", 16, 4, 8, 10, 4
    out = args.out or (None if args.smoke else HERE / "results" / "bench_serve.json")  # a smoke run writes nothing
    from _common import CLIP_BUILDERS

    paths = sorted((DATA / "imagenet-sample").glob("*.JPEG"))[: args.n]
    paths = (paths * (args.n // max(1, len(paths)) + 1))[: args.n]
    labels = class_names(args.labels)
    images = [p.read_bytes() for p in paths]
    res: dict = {"size": args.size, "device": args.device, "body": args.body, "n": args.n,
                 "concurrency": args.concurrency, "smoke": args.smoke,
                 "batch": args.batch, "wait_ms": args.wait_ms, "labels": len(labels), "cpus": os.cpu_count(),
                 "machine": platform.platform(), "python": platform.python_version(),
                 "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        model_dir = CLIP_BUILDERS[args.size](work / args.size)
        res["in_process"] = in_process(model_dir, paths, labels, args.batch, args.device)
        res["in_process"]["load1"] = round(os.getloadavg()[0], 2)
        ip = res["in_process"]
        print(f"in-process classify (limit)    {ip['images_per_s']:8.1f} images/s  load {ip['load1']}", flush=True)
        runs = [("serve", lambda log: start_server(model_dir, labels, work, args.batch, args.wait_ms, log,
                                                   args.device)),
                ("serve_workers_2", lambda log: start_server(model_dir, labels, work, args.batch, args.wait_ms, log,
                                                             args.device, workers=2)),
                ("naive_peer", lambda log: start_naive(model_dir, labels, work, log)),
                ("serve_batching_off", lambda log: start_server(model_dir, labels, work, 1, args.wait_ms, log,
                                                                args.device))][: 3 if args.smoke else 4]
        if ray_serve_installed() and not args.smoke:
            runs.append(("ray_serve_2_replicas", lambda log: start_server(
                model_dir, labels, work, args.batch, args.wait_ms, log, args.device,
                extra=("--engine", "ray", "--replicas", "2"))))
        for name, start in runs:
            proc, url = start(work / f"{name}.log")
            try:
                res[name] = serve_run(url, images, args.n, args.concurrency, args.body, proc.pid)
                if name == "serve":
                    res["sequential"] = serve_run(url, images, args.overhead_n, 1, args.body)
            finally:
                proc.terminate()
                proc.wait(60)
            r = res[name]
            print(f"{name:<22} c={args.concurrency:<3} {r['images_per_s']:8.1f} images/s  p50 {r['p50_ms']:7.1f} ms  "
                  f"p99 {r['p99_ms']:7.1f} ms  mean batch {r.get('mean_batch_size', '-')}  load {r['load1']}",
                  flush=True)
    base, serve = res["in_process"]["images_per_s"], res["serve"]["images_per_s"]
    res["ratios"] = {"serve_vs_in_process": round(serve / base, 3),
                     "serve_vs_naive_peer": round(serve / res["naive_peer"]["images_per_s"], 3),
                     "workers_2_vs_serve": round(res["serve_workers_2"]["images_per_s"] / serve, 3),
                     "workers_2_vs_in_process": round(res["serve_workers_2"]["images_per_s"] / base, 3),
                     "batching_on_vs_off": round(serve / res["serve_batching_off"]["images_per_s"], 3)
                     if "serve_batching_off" in res else None}
    if "ray_serve_2_replicas" in res:
        res["ratios"]["ray_serve_vs_workers_2"] = round(res["ray_serve_2_replicas"]["images_per_s"] /
                                                        res["serve_workers_2"]["images_per_s"], 3)
    q = res["ratios"]
    print(f"serve / in-process:        {q['serve_vs_in_process']:.2f}  (goal >= 0.9)")
    print(f"serve / naive peer:        {q['serve_vs_naive_peer']:.2f}  (goal >= 2)")
    print(f"--workers 2 / serve:       {q['workers_2_vs_serve']:.2f}")
    print(f"--workers 2 / in-process:  {q['workers_2_vs_in_process']:.2f}")
    if "ray_serve_vs_workers_2" in q:
        print(f"Ray Serve (2 replicas) / --workers 2: {q['ray_serve_vs_workers_2']:.2f}")
    if q["batching_on_vs_off"] is not None:
        print(f"batching on / off:         {q['batching_on_vs_off']:.2f}")
    seq = res["sequential"]
    cpu = {k: res[k].get("server_cpu_ms_per_request") for k in ("serve", "naive_peer")}
    print(f"CPU per image: in-process {min(v['cpu_ms_per_image'] for v in res['in_process'].values() if isinstance(v, dict)):.2f} ms; "
          f"serve {cpu['serve']} ms in the server + {res['serve']['client_cpu_ms_per_request']} ms in the load "
          f"client (which shares these {os.cpu_count()} cores); naive peer {cpu['naive_peer']} ms")
    print(f"server overhead p50 (c=1, latency - decode - forward - head): {seq['server_overhead_p50_ms']:.2f} ms; "
          f"outside the handler: {seq['outside_handler_p50_ms']:.2f} ms")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
