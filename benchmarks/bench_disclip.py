"""visroute's DisCLIP-style description selection + classname-free scoring against the DisCLIP reference code.

ImageNet scale: the 1000 classes and the DCLIP ImageNet description pool
(``descriptions_ilsvrc_dclip.json``, used as both pool and fallback pool, as the reference does for
``--pool dclip``), synthetic float32 embeddings (``--dim``, default 512), ``--images`` evaluation images
(default 50,000), a selection set of ``--n-sel`` images per class (default 4, so 4,000), k=3 candidates,
m=5 descriptions, classname-free scoring for every weight in ``--w-cls`` (default 0 and 2.5).

Inputs (fixed numpy seed ``--seed``), all L2-normalised and saved as float32 .npy under ``--workdir`` so
both sides read identical arrays:

  * class centres: 100 random "superclass" directions, centre_c = 0.9 * group(c) + sqrt(1 - 0.81) * own_c
    (siblings are confusable, like ImageNet's dog breeds);
  * captions: centre + 0.5 * noise;
  * description p: 0.6 * centre[owner(p)] + 1.0 * noise + 1.0 * b, owner = lowest class listing it,
    b a shared direction (a "modality gap");
  * images: centre[y] + 3.0 * noise + gamma_y * b, gamma_y ~ U(0, 0.5) per class (some classes' images
    are less similar to every description, so the fallback fires for a few per cent of candidates);
  * noise = standard normal / sqrt(dim). Selection images sorted by label (the reference asserts it);
    evaluation labels a random permutation of ``--images / 1000`` per class.

What is timed (inputs already loaded, imports done, on both sides):

  * visroute, in this venv's python (a subprocess of this script): ``disclip_pool`` + the own-index map,
    ``class_mean_similarities``, ``neighbourhoods``, ``select_descriptions``, ``masked_mean_similarity``,
    then for every weight the caption term and argmax (what ``DiscriminativeSelectionClassifier.predict``
    does, with the weight-independent parts computed once). Best of ``--repeat`` runs.
  * the reference, in ``--ref-python`` (default /tmp/dc-venv/bin/python) running ``--ref-driver``
    (default /tmp/disclip/bench_ref_driver.py, a throwaway kept outside this repository so that no
    reference code lives here): the main.py glue (pool construction, LLM assignment masks),
    ``get_top_k_ambiguous_classes_0s_per_image``, ``get_selection_masks_from_vlm_feedback_imagewise``, the
    main.py fallback loop, ``eval_cls_ful_des_plus_cls_less_des_imagewise`` with all weights. method.py runs
    from a copy with ``torch.float16`` replaced by ``torch.float32`` (CPU matmuls refuse mixed dtypes).
    The driver takes ``WORKDIR N OUT.npz``, reads WORKDIR/{caption,pool_emb,sel_X,sel_y,eval_X,eval_y}.npy,
    pool.json, params.json, uses the first N evaluation images, and writes topk, selected (ascending pool
    indices, -1 padded), fallback, predictions (one row per weight), seconds ([total, pool+masks,
    topk+selection, fallback loop, evaluation]), rss_kib ([after loading, peak]) and pool_matches.
    One run per size (it is slow). ``--ref-images`` lists the sizes the reference runs on (the first images;
    default 5000). At 50,000 it needs about 14 GiB (its (N, k, C+P) float32 mask is 2.9 GiB and the evaluation
    makes several such tensors), so a size whose estimate does not fit in MemAvailable is skipped, and any run
    is killed if MemAvailable falls below ``--min-free-gib``. Where the reference did not run on ``--images``,
    its time there is EXTRAPOLATED (labelled) from the largest measured size: pool/mask construction kept as
    measured, the rest scaled by N / n. Check (2-core machine, idle): measured 91-93 s at 50,000; from 5,000
    runs of 7.8-9.4 s the extrapolation gives 78-93 s, so it is good to about 15% and tends to be low.

Both sides get identical float32 inputs and torch's default thread count. Outputs are compared on the
common images: candidate lists (topk), the selected pool-index *sets* per (image, candidate) (visroute
returns them in score order, -1 padded; both are sorted), fallback flags, and predictions per weight.
Peak RSS is each subprocess's VmHWM from /proc/self/status (whole process: interpreter, torch, inputs
included; ``ru_maxrss`` is not used because Linux carries the parent's peak into a fork+exec'd child); the
peak after loading the inputs, before the timed part, is printed too.

The machine may be shared: before each timed run the script waits (``--max-wait`` seconds at most, in
steps of 30 s) until the 1-minute load average is at most ``--max-load``, and prints the load at that
moment and the "foreign" load during the run (cores kept busy by processes other than the measured one,
from /proc/stat and getrusage).

Usage::

    python benchmarks/bench_disclip.py [--images 50000] [--ref-images 5000[,50000]] [--dim 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DESCRIPTIONS = "/work/shared/data/descriptions/disclip/descriptions_ilsvrc_dclip.json"
N_GROUPS, GROUP_WEIGHT = 100, 0.9
CAPTION_NOISE, DESC_CENTRE, DESC_NOISE, DESC_BIAS = 0.5, 0.6, 1.0, 1.0
IMAGE_NOISE, GAMMA_HI = 3.0, 0.5


# ----------------------------------------------------------------------------------------- inputs
def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def class_descriptions(path: str) -> tuple[list[str], list[list[str]]]:
    data = json.load(open(path))
    keys = list(data["index_to_classname"].keys())
    assert keys == [str(i) for i in range(len(keys))], "class indices must be 0..C-1 in order"
    descs = [list(data["index_to_descriptions"][k]) for k in keys]
    assert all(descs), "the pool doubles as its own fallback: no class may have an empty list"
    return [data["index_to_classname"][k] for k in keys], descs


def make_inputs(args, workdir: Path) -> dict:
    from visroute.heads.selection import disclip_pool

    _, descs = class_descriptions(args.descriptions)
    C, D = len(descs), args.dim
    if args.images % C:
        raise SystemExit(f"--images must be a multiple of the number of classes ({C})")
    pool = disclip_pool(descs)
    index = {d: i for i, d in enumerate(pool)}
    owner = np.full(len(pool), -1)
    for c, ds in enumerate(descs):
        for d in ds:
            if owner[index[d]] < 0:
                owner[index[d]] = c
    rng = np.random.default_rng(args.seed)
    noise = lambda n: rng.standard_normal((n, D)) / np.sqrt(D)
    groups = normalise(rng.standard_normal((N_GROUPS, D)))
    centres = normalise(GROUP_WEIGHT * groups[rng.integers(0, N_GROUPS, C)]
                        + np.sqrt(1 - GROUP_WEIGHT ** 2) * normalise(rng.standard_normal((C, D))))
    b = normalise(rng.standard_normal(D))
    gamma = rng.uniform(0.0, GAMMA_HI, size=C)
    caption = normalise(centres + CAPTION_NOISE * noise(C))
    pool_emb = normalise(DESC_CENTRE * centres[owner] + DESC_NOISE * noise(len(pool)) + DESC_BIAS * b)

    def images(y):
        return normalise(centres[y] + IMAGE_NOISE * noise(len(y)) + gamma[y, None] * b)

    sel_y = np.repeat(np.arange(C), args.n_sel)
    sel_X = images(sel_y)
    eval_y = rng.permutation(np.repeat(np.arange(C), args.images // C))
    eval_X = images(eval_y)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, arr in dict(caption=caption, pool_emb=pool_emb, sel_X=sel_X, eval_X=eval_X).items():
        np.save(workdir / f"{name}.npy", arr.astype(np.float32))
    np.save(workdir / "sel_y.npy", sel_y.astype(np.int64))
    np.save(workdir / "eval_y.npy", eval_y.astype(np.int64))
    (workdir / "pool.json").write_text(json.dumps(pool))
    params = dict(descriptions=args.descriptions, k=args.k, m=args.m, n_sel=args.n_sel, w_cls=args.w_cls,
                  dim=D, seed=args.seed, images=args.images)
    (workdir / "params.json").write_text(json.dumps(params))
    return dict(C=C, P=len(pool), labels=eval_y)


# ----------------------------------------------------------------------------------------- visroute worker
def vm_hwm_kib() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a fork+exec'd child."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def visroute_worker(workdir: Path, n: int, out: str, repeat: int) -> None:
    import torch

    from visroute.heads.selection import (class_mean_similarities, disclip_pool, masked_mean_similarity,
                                          neighbourhoods, select_descriptions)

    params = json.loads((workdir / "params.json").read_text())
    _, descs = class_descriptions(params["descriptions"])
    ld = lambda name: torch.from_numpy(np.load(workdir / f"{name}.npy"))
    caption, pool_emb, sel_X = ld("caption"), ld("pool_emb"), ld("sel_X")
    sel_y = np.load(workdir / "sel_y.npy")
    X = ld("eval_X")[:n].contiguous()
    k, m, n_sel, weights = params["k"], params["m"], params["n_sel"], [float(w) for w in params["w_cls"]]
    C = len(descs)
    rss_loaded = vm_hwm_kib()

    def run():
        pool = disclip_pool(descs)
        index = {d: i for i, d in enumerate(pool)}
        own = [[index[d] for d in ds] for ds in descs]
        class_sims = class_mean_similarities(pool_emb, sel_X, sel_y, C, n_sel)
        topk = neighbourhoods(X, caption, k)
        selected, fallback = select_descriptions(class_sims, topk, m, own)
        base = masked_mean_similarity(X, pool_emb, selected)
        cap = torch.gather(X @ caption.T, 1, topk) if any(weights) else None
        preds = []
        for w in weights:
            scores = base + w * cap if w else base
            preds.append(torch.gather(topk, 1, scores.argmax(1, keepdim=True)).squeeze(1))
        return pool, topk, selected, fallback, torch.stack(preds)

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pool, topk, selected, fallback, preds = run()
        times.append(time.perf_counter() - t0)
    assert pool == json.loads((workdir / "pool.json").read_text())
    rss_peak = vm_hwm_kib()
    np.savez(out, topk=topk.numpy(), selected=selected.numpy(), fallback=fallback.numpy(), predictions=preds.numpy(),
             seconds=np.array(times), rss_kib=np.array([rss_loaded, rss_peak]))


# ----------------------------------------------------------------------------------------- measuring
def busy_cpu_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_load(max_load: float, max_wait: float) -> float:
    deadline = time.monotonic() + max_wait
    while True:
        load = os.getloadavg()[0]
        if load <= max_load or time.monotonic() >= deadline:
            return load
        print(f"  load {load:.2f} > {max_load}, waiting 30 s", flush=True)
        time.sleep(30)


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


def measured_run(cmd: list[str], label: str, args) -> dict:
    """Run a timed subprocess; kill it (by its pid) if the machine's MemAvailable drops below --min-free-gib."""
    load = wait_for_load(args.max_load, args.max_wait)
    print(f"running {label} (1-min load {load:.2f}) ...", flush=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, t0 = busy_cpu_seconds(), time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    low = None
    while proc.poll() is None:
        if mem_available_kib() < args.min_free_gib * 2 ** 20:
            low = mem_available_kib()
            proc.kill()
        time.sleep(0.25)
    output = proc.stdout.read()
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    foreign = max(0.0, busy_cpu_seconds() - busy0 - child_cpu) / wall
    if low is not None:
        raise SystemExit(f"{label} killed: MemAvailable fell to {low / 2 ** 20:.1f} GiB")
    if proc.returncode:
        sys.stderr.write(output)
        raise SystemExit(f"{label} failed with exit code {proc.returncode}")
    print(f"  done in {wall:.1f} s wall (foreign load {foreign:.2f} cores)", flush=True)
    return dict(load=load, foreign=foreign)


def sorted_sets(selected: np.ndarray) -> np.ndarray:
    """Selected indices as ascending sets, -1 padding at the end."""
    big = np.iinfo(np.int64).max
    s = np.sort(np.where(selected >= 0, selected, big), axis=-1)
    return np.where(s == big, -1, s)


def compare(vis: dict, ref: dict, n: int) -> dict:
    a, b = sorted_sets(vis["selected"][:n]), sorted_sets(ref["selected"][:n])
    sel_diff = np.flatnonzero((a != b).any(-1).reshape(-1))
    topk_same = np.array_equal(vis["topk"][:n], ref["topk"][:n])
    pred_diff = (vis["predictions"][:, :n] != ref["predictions"][:, :n]).sum(1)
    return dict(topk=topk_same, sel_diff=sel_diff, a=a, b=b, pred_diff=pred_diff,
                fallback=np.array_equal(vis["fallback"][:n], ref["fallback"][:n]))


def mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


def rss(r: dict) -> str:
    """Peak RSS of the run, and how much of it came after the inputs were loaded."""
    return f"{mib(r['rss_kib'][1])} (+{mib(r['rss_kib'][1] - r['rss_kib'][0])})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=50_000, help="evaluation images (multiple of 1000)")
    p.add_argument("--ref-images", type=lambda s: [int(x) for x in s.split(",")], default=[5_000],
                   help="comma-separated sizes the reference runs on (the first images); e.g. 5000,50000")
    p.add_argument("--min-free-gib", type=float, default=1.5,
                   help="skip a reference size whose estimated memory would leave less than this available, "
                        "and kill any measured run if MemAvailable falls below it")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--m", type=int, default=5)
    p.add_argument("--n-sel", type=int, default=4, help="selection images per class")
    p.add_argument("--w-cls", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 2.5])
    p.add_argument("--repeat", type=int, default=3, help="visroute runs (best is reported)")
    p.add_argument("--descriptions", default=DESCRIPTIONS)
    p.add_argument("--workdir", default="/tmp/bench_disclip")
    p.add_argument("--ref-python", default="/tmp/dc-venv/bin/python")
    p.add_argument("--ref-driver", default="/tmp/disclip/bench_ref_driver.py")
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--max-wait", type=float, default=600)
    p.add_argument("--worker", choices=["visroute"], help=argparse.SUPPRESS)
    p.add_argument("--worker-n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    workdir = Path(args.workdir)
    if args.worker:
        visroute_worker(workdir, args.worker_n, args.worker_out, args.repeat)
        return

    if not Path(args.ref_driver).exists():
        raise SystemExit(f"reference driver {args.ref_driver} not found (see this script's docstring)")
    info = make_inputs(args, workdir)
    C, P, K, N = info["C"], info["P"], args.k, args.images
    print(f"inputs: C={C} classes, P={P} pool descriptions, dim={args.dim}, {N} eval images, "
          f"{args.n_sel * C} selection images, k={K}, m={args.m}, w_cls={args.w_cls}, seed={args.seed} -> {workdir}",
          flush=True)
    ref_sizes = sorted({min(n, N) for n in args.ref_images})

    def vis(n):
        out = str(workdir / f"visroute_{n}.npz")
        meta = measured_run([sys.executable, __file__, "--workdir", str(workdir), "--worker", "visroute",
                             "--worker-n", str(n), "--worker-out", out, "--repeat", str(args.repeat)],
                            f"visroute on {n} images (best of {args.repeat})", args)
        return {**dict(np.load(out)), **meta}

    def ref(n):
        # the reference's peak grows by about 4.5x its (n, k, C+P) float32 mask (measured: +12.7 GiB at 50,000)
        need = 4.5 * n * K * (C + P) * 4 / 2 ** 30 + 1.0
        free = mem_available_kib() / 2 ** 20
        if need > free - args.min_free_gib:
            print(f"skipping the reference on {n} images: needs about {need:.1f} GiB, {free:.1f} GiB available")
            return None
        out = str(workdir / f"reference_{n}.npz")
        meta = measured_run([args.ref_python, args.ref_driver, str(workdir), str(n), out],
                            f"reference on {n} images", args)
        return {**dict(np.load(out)), **meta}

    vis_runs, ref_runs = {}, {}
    for n in ref_sizes:
        vis_runs[n] = vis(n)
        r = ref(n)
        if r is not None:
            ref_runs[n] = r
        if not bool(r is None or r["pool_matches"]):
            print("WARNING: the reference's pool order differs from visroute's disclip_pool")
    if N not in vis_runs:
        vis_runs[N] = vis(N)
    if not ref_runs:
        raise SystemExit("the reference ran on no size")
    v_full = vis_runs[N]
    yn = lambda ok: "yes" if ok else "NO"
    t_vis = lambda n: float(vis_runs[n]["seconds"].min())
    base = max(ref_runs)                    # extrapolation base: the largest measured size
    rb = ref_runs[base]["seconds"]
    extrap = lambda n: float(rb[1] + (rb[0] - rb[1]) * n / base)

    rows = [["images", "visroute", "reference", "speed-up", "same selections", "same predictions",
             "peak RSS visroute (+timed part)", "peak RSS reference (+timed part)"]]
    details = []
    for n in sorted(vis_runs):
        v = vis_runs[n]
        if n in ref_runs:
            r = ref_runs[n]
            cmp = compare(v, r, n)
            details.append((n, cmp, r))
            nd = len(cmp["sel_diff"])
            sel_txt = yn(nd == 0) + ("" if nd == 0 else f" ({nd}/{n * K} differ)")
            pred_txt = yn(not cmp["pred_diff"].any()) + ("" if not cmp["pred_diff"].any() else " (" + ", ".join(
                f"w={w:g}: {d}" for w, d in zip(args.w_cls, cmp["pred_diff"])) + " differ)")
            t_r = float(r["seconds"][0])
            rows.append([f"{n:,}", f"{t_vis(n):.3f} s", f"{t_r:.1f} s (measured)", f"{t_r / t_vis(n):.1f}x",
                         sel_txt, pred_txt, rss(v), rss(r)])
        else:
            t_r = extrap(n)
            mask_gib = n * K * (C + P) * 4 / 2 ** 30
            rows.append([f"{n:,}", f"{t_vis(n):.3f} s", f"{t_r:.1f} s (EXTRAPOLATED from {base:,})",
                         f"{t_r / t_vis(n):.1f}x (vs extrapolated)", f"(checked on {base:,})",
                         f"(checked on {base:,})", rss(v), f"not run; (N,k,C+P) float32 mask alone {mask_gib:.1f} GiB"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for i, r in enumerate(rows):
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print()
    labels = np.load(workdir / "eval_y.npy")
    acc = lambda pr, n: ", ".join(f"w={w:g}: {100 * (row == labels[:n]).mean():.2f}%" for w, row in zip(args.w_cls, pr))
    for n, cmp, r in details:
        print(f"on {n:,}: candidates (top-k) identical {yn(cmp['topk'])}, fallback flags identical "
              f"{yn(cmp['fallback'])}; accuracy visroute {acc(vis_runs[n]['predictions'], n)}, reference "
              f"{acc(r['predictions'], n)}")
        rs = r["seconds"]
        print(f"  reference seconds: pool+masks {rs[1]:.2f}, top-k+selection {rs[2]:.2f}, fallback loop {rs[3]:.2f}, "
              f"evaluation {rs[4]:.2f}; peak RSS after loading inputs {mib(r['rss_kib'][0])}")
    for n in ref_runs:
        if n != base:
            print(f"  (linear extrapolation from {n:,} to {base:,}: {float(ref_runs[n]['seconds'][1] + (ref_runs[n]['seconds'][0] - ref_runs[n]['seconds'][1]) * base / n):.1f} s; measured {float(rb[0]):.1f} s)")
    consistent = all(np.array_equal(v_full[key][:n], vis_runs[n][key][:n]) for n in vis_runs
                     for key in ("topk", "selected", "fallback")) and \
        all(np.array_equal(v_full["predictions"][:, :n], vis_runs[n]["predictions"]) for n in vis_runs)
    print(f"visroute on {N:,}: accuracy {acc(v_full['predictions'], N)}; fallbacks {int(v_full['fallback'].sum())}/"
          f"{N * K}; candidates with <{args.m} selected {int(((v_full['selected'] >= 0).sum(-1) < args.m).sum())}; "
          f"its smaller runs agree with it on their images: {yn(consistent)}")
    for n in sorted(vis_runs):
        print(f"  visroute seconds on {n:,} (all repeats): {np.round(vis_runs[n]['seconds'], 3).tolist()}; "
              f"peak RSS after loading inputs {mib(vis_runs[n]['rss_kib'][0])}")
    for name, runs in (("visroute", vis_runs), ("reference", ref_runs)):
        for n, r in sorted(runs.items()):
            print(f"load: {name} on {n:,}: 1-min load {r['load']:.2f} at start, foreign load during run "
                  f"{r['foreign']:.2f} cores")
    for n, cmp, r in details:
        if len(cmp["sel_diff"]):
            print(f"\nfirst differing selections on {n:,} (image, candidate, class): visroute set | reference set")
            for flat in cmp["sel_diff"][:10]:
                i, j = divmod(int(flat), K)
                print(f"  ({i}, {j}, {int(vis_runs[n]['topk'][i, j])}): {cmp['a'][i, j].tolist()} | "
                      f"{cmp['b'][i, j].tolist()}")

if __name__ == "__main__":
    main()
