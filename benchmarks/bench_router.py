"""Scale benchmark of the router pipeline: records -> routing table -> embeddings -> routers -> decisions.

1. Generates a synthetic records Parquet (``visroute.router.data.records.records_schema``) of about ``--rows``
   rows: ``--models`` models x ``--datasets`` datasets x ``--prompts`` prompt variants x N samples. The first
   ``--star-models`` models are prompt-agnostic (CLIP-style, ``prompt_variant="*"``, one record per sample,
   broadcast to every prompt variant by ``build_table``), so N is chosen so that the total is ~``--rows``.
   Task texts are built with ``visroute.tasks.model.task_text`` from per-dataset question templates whose
   slots and options are drawn from small vocabularies, so texts repeat a lot (the number of unique texts is
   printed). Success depends on (dataset type, model), the prompt variant, a per-text difficulty and noise;
   per-call costs differ by orders of magnitude between models. Generation is timed but is not part of the
   goal.
2. Times ``read_records`` + ``build_table(granularity="sample", split_by="dataset")`` ("build"), embedding
   the table's unique task texts with ``TextEmbedder`` (MiniLM on the CPU, fresh cache directory: model
   load, encode and cache write are reported apart), the ``train_bundle``-style featurisation of the train
   split (``embed(train.text)``, memo hits), and fitting ``KNNRouter``, ``MLPRouter`` (default epochs, then
   fewer epochs, then - outside visroute - on train rows aggregated by identical text) and
   ``MatrixFactorizationRouter`` on the train split. Goal: build + embed + train kNN + train MLP < 5 min.
   Also: ``visroute route build --no-quality`` on the same Parquet in a fresh interpreter (wall time and its own
   peak RSS, VmHWM; goal < 2 GiB and < 5 min); ``TextEmbedder.embed`` side by side with plain
   ``SentenceTransformer.encode`` on ``--side-texts`` texts neither has seen (goal: ratio >= 0.9); routing a
   never-seen text (``embed([text])`` with the store already holding every table text; goal <= 30 ms).
3. Decision latency with cached embeddings (kNN, MLP, MF): ``router.predict_proba(X)`` + ``choose(proba, costs, lam)`` for
   single tasks (batch of 1) and batches of 1000; per-task microseconds (goal < 1 ms). Also the cost of a
   fresh ``TextEmbedder`` answering one already-cached text from the on-disk cache (what
   ``RouterBundle.featurise`` does per call when no embedder is passed).
4. Peak RSS of the process (``ru_maxrss``) after each phase.

The machine may be shared: before each timed phase the script waits (up to ``--max-wait`` s, 30 s at a
time) while the load of other processes is above ``--max-load``; each figure is printed with the 1-minute
load average read just before it and the "foreign load" (average cores other processes kept busy during
the measurement, from /proc/stat minus this process's CPU time).

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_router.py [--side-texts 1500] [--rows 2500000] [--models 7] [--datasets 10]
        [--prompts 8] [--star-models 1] [--seed 0] [--workdir DIR] [--max-load 1.5] [--max-wait 600]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Timed, smoke_args, write_results  # noqa: E402
from _phases import Report, configure, rss_mib, timed_phase, wait_for_quiet  # noqa: E402
from _synthetic_records import generate_records  # noqa: E402

# --------------------------------------------------------------------------- the benchmark


def aggregate_by_text(X_codes: np.ndarray, Y: np.ndarray, w: np.ndarray):
    """Train rows with identical text -> one row: weighted mean success (NaN where no model run), summed weight.
    (What an MLP fit could do; KNNRouter.fit already does the same by embedding.)"""
    G = int(X_codes.max()) + 1
    mask = ~np.isnan(Y)
    sums = np.zeros((G, Y.shape[1]))
    cnt = np.zeros((G, Y.shape[1]))
    np.add.at(sums, X_codes, np.nan_to_num(Y) * w[:, None])
    np.add.at(cnt, X_codes, mask * w[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        Yg = np.where(cnt > 0, sums / cnt, np.nan).astype(np.float32)
    wg = np.bincount(X_codes, weights=w, minlength=G).astype(np.float32)
    return Yg, wg


def route_build_subprocess(records: str, out: str) -> dict:
    """``visroute route build`` as a user runs it, in a fresh interpreter that reports its own peak RSS (VmHWM)."""
    import json
    import subprocess

    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write('VMHWM ' + next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')) + '\\n'))\n"
            "from visroute.cli import main\nsys.argv = ['visroute'] + sys.argv[1:]\nmain()\n")
    la = wait_for_quiet()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "route", "build", records, "--out", out, "--split", "dataset",
                           "--no-quality"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"route build failed: {proc.stderr[-2000:]}")
    peak = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VMHWM"))) / 1024
    meta = json.loads(open(os.path.join(out, "table.json")).read())
    import pyarrow.parquet as pq

    return {"seconds": seconds, "peak_rss_mib": peak, "load1": la, "n_records": meta["n_records"],
            "table_rows": pq.read_metadata(os.path.join(out, "table.parquet")).num_rows}


def embed_side_by_side(emb, texts: list[str], cache: str, rounds: int = 2) -> dict:
    """TextEmbedder.embed into a fresh store against plain SentenceTransformer.encode, same model, same texts,
    alternating (plain, ours) ``rounds`` times; the best time of each side."""
    from visroute.router.data.embed import TextEmbedder

    la = wait_for_quiet()
    plain, ours = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        emb.model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        plain.append(time.perf_counter() - t0)
        fresh = TextEmbedder(cache_dir=f"{cache}-{r}")
        fresh._model = emb.model
        t0 = time.perf_counter()
        fresh.embed(texts)
        ours.append(time.perf_counter() - t0)
    p, o = min(plain), min(ours)
    return {"texts": len(texts), "visroute_s": o, "plain_s": p, "visroute_texts_per_s": len(texts) / o,
            "plain_texts_per_s": len(texts) / p, "ratio": p / o, "all_plain_s": plain, "all_visroute_s": ours,
            "load1": la}


def never_seen_latency(emb, n: int) -> dict:
    la = wait_for_quiet()
    ours, plain = [], []
    for i in range(n):
        t0 = time.perf_counter()
        emb.embed([f"Never seen before, number {i}: which object is in the picture? Options: a, b, c"])
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        emb.model.encode([f"Plain encode {i}: which object is in the picture?"], normalize_embeddings=True)
        plain.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(ours)), "p90_ms": 1e3 * float(np.percentile(ours, 90)),
            "plain_median_ms": 1e3 * float(np.median(plain)), "store_rows": len(emb.store), "load1": la}


def latency(router, X, costs, lam, batch: int, reps: int) -> dict:
    from visroute.router.decide.rules import choose

    n = len(X)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, max(1, n - batch), reps)
    for s in starts[: min(5, reps)]:  # warm-up
        choose(router.predict_proba(X[s : s + batch]), costs, lam)
    times = np.empty(reps)
    for i, s in enumerate(starts):
        xb = X[s : s + batch]
        t0 = time.perf_counter()
        choose(router.predict_proba(xb), costs, lam)
        times[i] = time.perf_counter() - t0
    per = times / batch * 1e6
    return {"median_us": float(np.median(per)), "p99_us": float(np.percentile(per, 99)), "mean_us": float(per.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_500_000)
    ap.add_argument("--models", type=int, default=7)
    ap.add_argument("--datasets", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--star-models", type=int, default=1,
                    help="how many of the models are prompt-agnostic (prompt_variant '*'); default 1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--option-vocab", type=int, default=8,
                    help="each task shows 4 options out of the first N words of its dataset's option vocabulary "
                         "(controls the number of unique texts: C(N, 4) option sets x 3 templates x ~7 slots per dataset)")
    ap.add_argument("--max-total-wait", type=float, default=1800.0, help="cap on all waiting for a quiet machine")
    ap.add_argument("--workdir", default=None, help="where the Parquet and the embedding cache go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--few-epochs", type=int, default=5)
    ap.add_argument("--single-reps", type=int, default=2000)
    ap.add_argument("--batch-reps", type=int, default=30)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--skip-mf", action="store_true")
    ap.add_argument("--side-texts", type=int, default=1500, help="texts embedded both ways for the side-by-side ratio")
    args = smoke_args(ap, argv, rows=3000, models=3, datasets=2, prompts=2, option_vocab=5, few_epochs=1,
                      single_reps=20, batch_reps=2, side_texts=20, max_load=1e9, max_wait=0.0, max_total_wait=0.0,
                      skip_mf=True)
    configure(args.max_load, args.max_wait, args.max_total_wait)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from visroute.router.decide.rules import choose  # noqa: F401  (imported up front: not part of any timing)
    from visroute.router.data.embed import TextEmbedder
    from visroute.router.learn.routers import KNNRouter, MatrixFactorizationRouter, MLPRouter
    from visroute.router.data.table import build_table, read_records

    work = args.workdir or tempfile.mkdtemp(prefix="bench_router-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "records.parquet")
    print(f"bench_router: python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs; workdir {work}", flush=True)
    rep = Report()
    rep.add("start (imports)", None, "")

    # ---- 1. generation (not part of the goal)
    facts = timed_phase(rep, "generate records Parquet (not in goal)",
                        lambda: generate_records(path, args.rows, args.models, args.datasets, args.prompts,
                                                 args.star_models, args.seed, args.option_vocab),
                        lambda f: f"{f['rows']:,} rows, {f['file_mib']:.0f} MiB", first=True)
    print(f"  models: {facts['models']} (prompt-agnostic: {facts['star_models']}); "
          f"{facts['samples_per_dataset']} samples per dataset; {facts['unique_texts_generated']:,} unique task texts "
          f"(mean {facts['text_chars_mean']:.0f} chars)", flush=True)

    # ---- 2. build: the CLI in a fresh process (its own peak RSS), then in this process for the phases below
    cli = route_build_subprocess(path, os.path.join(work, "table-cli"))
    rep.add("visroute route build --no-quality (subprocess)", None,
            f"peak RSS {cli['peak_rss_mib']:.0f} MiB (goal < 2048), {cli['table_rows']:,} rows", cli["load1"],
            seconds=cli["seconds"])
    records = timed_phase(rep, "read_records", lambda: read_records(path), lambda t: f"{t.num_rows:,} records",
                          in_goal=True)
    table = timed_phase(rep, "build_table(sample, split_by=dataset)",
                        lambda: build_table(records, granularity="sample", split_by="dataset", seed=args.seed),
                        lambda t: f"{len(t):,} table rows x {len(t.models)} models", in_goal=True)
    del records
    splits = {s: int((table.split == s).sum()) for s in ("train", "val", "test")}
    test_sets = sorted(set(table.dataset[table.split == "test"]))
    print(f"  splits {splits}; test datasets {test_sets}; NaN cells {int(np.isnan(table.success).sum()):,}", flush=True)

    # ---- embeddings: unique texts of the whole table, fresh cache
    cache = os.path.join(work, "emb-cache")
    shutil.rmtree(cache, ignore_errors=True)
    emb = TextEmbedder(cache_dir=cache)
    uniq, inv = timed_phase(rep, "unique texts (np.unique over table.text)",
                            lambda: np.unique(table.text, return_inverse=True),
                            lambda r: f"{len(r[0]):,} unique of {len(table):,}", in_goal=True)
    timed_phase(rep, "embed: load MiniLM", lambda: emb.model, "SentenceTransformer on cpu", in_goal=True)
    enc_time = []
    real_encode = emb._model.encode

    def timed_encode(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_encode(*a, **k)
        finally:
            enc_time.append(time.perf_counter() - t0)

    emb._model.encode = timed_encode  # instance attribute: measures the encode share of embed()
    E = timed_phase(rep, "embed: TextEmbedder.embed(unique texts)", lambda: emb.embed(list(uniq)),
                    lambda e: f"{len(uniq):,} texts, {e.shape}", in_goal=True)
    r = rep.rows[-1]
    enc = sum(enc_time)
    emb._model.encode = real_encode
    print(f"  of which model.encode {enc:.2f} s ({len(uniq) / enc:.0f} texts/s), store write + memo "
          f"{r.seconds - enc:.2f} s; store {os.path.getsize(os.path.join(cache, 'minilm.sqlite')) / 2**20:.1f} MiB",
          flush=True)
    side = embed_side_by_side(emb, [f"{t} (variant)" for t in uniq[: args.side_texts]], os.path.join(work, "emb-side"))
    rep.add("embed vs plain SentenceTransformer.encode", None,
            f"{side['texts']} new texts: visroute {side['visroute_texts_per_s']:.0f}/s, plain "
            f"{side['plain_texts_per_s']:.0f}/s, ratio {side['ratio']:.2f} (goal >= 0.9)", side["load1"])
    unseen = never_seen_latency(emb, 30)
    rep.add("route a never-seen text: embed([new text])", None,
            f"median {unseen['median_ms']:.1f} ms, p90 {unseen['p90_ms']:.1f} ms (goal <= 30), plain encode median "
            f"{unseen['plain_median_ms']:.1f} ms; store of {unseen['store_rows']:,} texts", unseen["load1"])

    train, val, test = table.part("train"), table.part("val"), table.part("test")
    Xtr = timed_phase(rep, "featurise train: embed(train.text) (memo hits)", lambda: emb.embed(list(train.text)),
                      lambda x: f"{x.shape[0]:,} x {x.shape[1]} float32 ({x.nbytes / 2**20:.0f} MiB)", in_goal=True)
    Xte = E[inv[table.split == "test"]]
    costs = train.model_costs()
    med = float(np.median(costs))
    lam = 1.0 / (10 * med) if med > 0 else 0.0  # a mid-range trade-off

    # ---- training
    knn = timed_phase(rep, "train KNNRouter(k=20)", lambda: KNNRouter().fit(Xtr, train.success, train.weight),
                      lambda k: f"{len(k.X_):,} points after aggregating duplicates", in_goal=True)
    mlp = timed_phase(rep, "train MLPRouter() default (30 epochs, patience 5)",
                      lambda: MLPRouter().fit(Xtr, train.success, train.weight), "", in_goal=True)
    mlp_few = timed_phase(rep, f"train MLPRouter(epochs={args.few_epochs})",
                          lambda: MLPRouter(epochs=args.few_epochs).fit(Xtr, train.success, train.weight), "")
    # outside visroute: aggregate train rows by identical text first (like KNNRouter.fit), then the default MLP
    tr_codes = inv[table.split == "train"]
    agg = timed_phase(rep, "aggregate train rows by text (bench-side)",
                      lambda: aggregate_by_text(np.unique(tr_codes, return_inverse=True)[1].reshape(-1),
                                                train.success, train.weight.astype(np.float64)),
                      lambda a: f"{len(a[0]):,} rows")
    tr_uniq = np.unique(tr_codes)
    mlp_agg = timed_phase(rep, "train MLPRouter() default on aggregated rows",
                          lambda: MLPRouter().fit(E[tr_uniq], agg[0], agg[1]), "")
    mf = None
    if not args.skip_mf:
        mf = timed_phase(rep, "train MatrixFactorizationRouter() default",
                         lambda: MatrixFactorizationRouter().fit(Xtr, train.success, train.weight), "")

    # quality sanity check (mean log-loss on the held-out datasets, lower is better), not timed
    def logloss(p, y):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        m = ~np.isnan(y)
        return float(-(np.nan_to_num(y) * np.log(p) + (1 - np.nan_to_num(y)) * np.log(1 - p))[m].mean())

    quality = {name: logloss(rt.predict_proba(Xte), test.success) for name, rt in
               [("knn", knn), ("mlp", mlp), (f"mlp{args.few_epochs}", mlp_few), ("mlp-agg", mlp_agg)]
               + ([("mf", mf)] if mf is not None else [])}
    prior = np.nanmean(train.success, axis=0)
    quality["prior"] = logloss(np.broadcast_to(prior, test.success.shape), test.success)
    print("  test log-loss (held-out datasets): " + ", ".join(f"{k} {v:.4f}" for k, v in quality.items()), flush=True)

    # ---- 3. decision latency with cached embeddings
    lat = {}
    for name, rt in [("knn", knn), ("mlp", mlp)] + ([("mf", mf)] if mf is not None else []):
        for batch, reps in [(1, args.single_reps), (1000, args.batch_reps)]:
            la = wait_for_quiet()
            with Timed() as t:
                res = latency(rt, Xte, costs, lam, batch, reps)
            lat[(name, batch)] = res
            rep.add(f"latency {name} predict_proba+choose, batch {batch}", None,
                    f"median {res['median_us']:.1f} us/task, p99 {res['p99_us']:.1f} (over {reps} calls)", la)
            rep.rows[-1].foreign = t.foreign
    # what RouterBundle.featurise does per call without an embedder: a fresh TextEmbedder, memo empty,
    # answers an already-cached text from the on-disk npz store
    one = [str(test.text[0])]
    la = wait_for_quiet()
    with Timed() as t:
        TextEmbedder(cache_dir=cache).embed(one)
    rep.add("fresh TextEmbedder().embed([cached text])", t, "one indexed look-up in the SQLite store", la)

    # ---- final table
    goal_rows = [r for r in rep.rows if r.in_goal]
    goal = sum(r.seconds for r in goal_rows)
    print("\n## bench_router results\n")
    print(f"records: {facts['rows']:,} rows ({args.models} models, {args.datasets} datasets, {args.prompts} prompt "
          f"variants, {facts['samples_per_dataset']} samples/dataset, {len(facts['star_models'])} prompt-agnostic "
          f"model); routing table {len(table):,} rows (train {splits['train']:,}, val {splits['val']:,}, "
          f"test {splits['test']:,}); unique task texts {len(uniq):,}\n")
    print("| phase | seconds | own CPU s | peak RSS (MiB) | load1 before | foreign load | notes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rep.rows:
        if r.phase.startswith("latency"):
            continue
        s = f"{r.seconds:.2f}" if r.seconds is not None else ""
        l1 = f"{r.load1:.2f}" if r.load1 is not None else ""
        fl = f"{r.foreign:.2f}" if r.foreign is not None else ""
        c = f"{r.cpu:.1f}" if r.cpu is not None else ""
        print(f"| {r.phase}{' (goal)' if r.in_goal else ''} | {s} | {c} | {r.rss:.0f} | {l1} | {fl} | {r.detail} |")
    print(f"| **build + embed + train kNN + MLP (goal < 300 s)** | **{goal:.1f}** | | | | | "
          f"{'met' if goal < 300 else 'NOT met'} |")
    print("\n| decision latency (cached embeddings) | median us/task | p99 us/task | mean us/task | load1 before | foreign load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rep.rows:
        if r.phase.startswith("latency"):
            name, batch = r.phase.split()[1], int(r.phase.split()[-1])
            x = lat[(name, batch)]
            print(f"| {name}, batch {batch} | {x['median_us']:.1f} | {x['p99_us']:.1f} | {x['mean_us']:.1f} | "
                  f"{r.load1:.2f} | {r.foreign:.2f} |")
    print("\n| router | test log-loss (held-out datasets) |\n| --- | ---: |")
    for k, v in quality.items():
        print(f"| {k} | {v:.4f} |")
    print(f"\npeak RSS at exit: {rss_mib():.0f} MiB")
    write_results("bench_router", smoke=args.smoke, doc={
        "records": facts, "table_rows": len(table), "unique_texts": len(uniq), "route_build_cli": cli,
        "embed_side_by_side": side, "never_seen_text": unseen, "goal_seconds": goal,
        "phases": [vars(r) for r in rep.rows if not r.phase.startswith("latency")],
        "decision_latency_us": {f"{n}_batch{b}": {**v, "load1": next((r.load1 for r in rep.rows if r.phase ==
                                f"latency {n} predict_proba+choose, batch {b}"), None)} for (n, b), v in lat.items()},
        "test_logloss": quality})
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
