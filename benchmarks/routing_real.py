"""Routing on public data nobody here made: RouteLLM's GSM8K and MT-Bench development sets (GPT-4 vs Mixtral).

    python benchmarks/routing_real.py [--routellm PATH] [--folds 5] [--repeats 3] [--llm-router SPEC]
        [--routerbench PATH] [--skip-routellm] [--smoke]

PATH is a RouteLLM checkout (or a bare git mirror of it: the two development folders are extracted from its
HEAD into a temporary folder). Without --routellm the script looks at $VISROUTE_ROUTELLM and a RouteLLM checkout
beside this repository, and otherwise stops saying how to get it (git clone https://github.com/lm-sys/RouteLLM). RouteLLM's MMLU responses (its
reserved test set) are never read.

Records come from ``visroute route import routellm`` (contaminated prompts dropped, like RouteLLM's evaluation).
Every number is out-of-fold: for each fold the routers are trained on the other folds (85% train, 15%
validation; on MT-Bench, where 15% is a handful of tasks, 3-fold cross-fitted predictions on all non-test tasks
are the validation set) and score the fold's tasks. The curves pool the folds' scores as within-fold ranks (the
quantile cuts RouteLLM takes on its test set, taken fold by fold). Splits:

- ``random``: K folds at random, repeated ``--repeats`` times (mean and standard deviation over repeats);
- ``topic``: leave one MT-Bench category out (8 folds; GSM8K has no topic or category field).

For each router and baseline: APGR (dense, and RouteLLM's 10-bin discrete), CPT(50%), CPT(80%) as strong-call
shares, accuracy and cost per task at a 50% strong share read off the curve, and the calibrated operating point
(threshold = the validation quantile for a 50% share, applied to the test fold) with its realised share.
Routers: kNN, logistic, MLP and matrix factorisation on MiniLM task-text embeddings (torch routers with
batch size 64; the estimators' defaults are tuned for large tables), and the lexical router (embeddings plus the
texts' words and length, its own defaults). Baselines: random (the diagonal), the
dataset/topic prior, the oracle, and an LLM router when --llm-router names an endpoint. Then: a cascade
(Mixtral first, escalate when the router's predicted success of Mixtral is below a threshold calibrated on
validation for the cost of a 50% share) and an ensemble (both models when the MF router's predicted
successes are within a margin calibrated for +10% cost), each scored by what it pays for every call;
leakage (near-duplicate texts across folds) and what removing it does; MF ``add_model`` from 300 tasks
against full retraining. Results: benchmarks/results/routing_real.json, and the printed table in routing_real.txt beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from visroute.router.data.embed import TextEmbedder
from visroute.router.evaluate.aiq import hull_area
from visroute.router.evaluate.metrics import sweep_metrics, threshold_curve, two_model_metrics
from visroute.router.evaluate.policies import dataset_prior, share_threshold
from visroute.router.data.routellm import read_routellm
from visroute.router.learn.kinds import make_router
from visroute.router.decide.strategies import calibrate_cascade, calibrate_margin, cascade, cascade_sweep, ensemble
from visroute.router.data.table import build_table

ROUTERS = ("knn", "logistic", "mlp", "mf", "lexical")
ROUTER_KW = {"knn": {}, "logistic": {"batch_size": 64}, "mlp": {"batch_size": 64}, "mf": {"batch_size": 64},
             "lexical": {}}
CANDIDATES = (str(Path(__file__).resolve().parents[1].parent / "RouteLLM"),)  # a checkout beside the repository
EVAL_DIRS = ("routellm/evals/gsm8k", "routellm/evals/mt_bench")


def portable(summary: dict, root) -> dict:
    """The import summary with file paths relative to the RouteLLM checkout: results committed to the repository
    name no path of the machine that made them."""
    prefix = str(root).rstrip("/") + "/"
    fix = lambda v: v.replace(prefix, "") if isinstance(v, str) else v  # noqa: E731
    out = json.loads(json.dumps(summary))
    out["source"] = "RouteLLM checkout"
    for bench in out.values():
        if isinstance(bench, dict) and isinstance(bench.get("files"), dict):
            bench["files"] = {k: fix(v) for k, v in bench["files"].items()}
    return out


def find_checkout(given: str | None) -> Path:
    """A folder holding routellm/evals/{gsm8k,mt_bench}: the given path, a candidate, or one extracted from a git
    mirror's HEAD (only the two development folders)."""
    cands = [given] if given else [os.environ.get("VISROUTE_ROUTELLM"), *CANDIDATES]
    for c in filter(None, cands):
        p = Path(c).expanduser()
        if all((p / d).is_dir() for d in EVAL_DIRS):
            return p
        if (p / "HEAD").is_file() and (p / "objects").is_dir():  # a bare git repository
            out = Path(tempfile.mkdtemp(prefix="routellm-"))
            arch = subprocess.run(["git", "--git-dir", str(p), "archive", "HEAD", *EVAL_DIRS], capture_output=True,
                                  check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(out)], input=arch, check=True)
            return out
    sys.exit("no RouteLLM checkout found: run `git clone https://github.com/lm-sys/RouteLLM ../RouteLLM` or pass "
             "--routellm PATH (a checkout, or a bare git mirror of it)")


def folds_random(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % k


def folds_topic(groups: np.ndarray) -> np.ndarray:
    return np.unique(groups, return_inverse=True)[1]


def fit_predict(kind: str, X, Y, Xs: list) -> list[np.ndarray]:
    r = make_router(kind, **ROUTER_KW[kind]).fit(X, Y)
    return [r.predict_proba(x) for x in Xs]


def crossfit(kind: str, X, Y, Xte, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions on every non-test row (k inner folds: the calibration set) and the predictions of
    a router trained on all of them for the test rows. Used where a 15% validation split would be a handful of
    tasks (MT-Bench), so the quantile that fixes the 50% share is estimated from all non-test tasks."""
    inner = np.random.default_rng(seed).permutation(len(X)) % k
    oof = np.zeros(Y.shape)
    for f in range(k):
        oof[inner == f] = fit_predict(kind, X[inner != f], Y[inner != f], [X[inner == f]])[0]
    return oof, fit_predict(kind, X, Y, [Xte])[0]


def fold_rank(test: np.ndarray) -> np.ndarray:
    """Each test score's mid-rank within its own fold, in (0, 1). Pooling out-of-fold scores on this scale is
    RouteLLM's per-test-set quantile cut applied fold by fold; a fold-wide constant (the prior of an unseen
    topic) becomes one tie across all folds, i.e. random, instead of ranking tasks by which fold they fell in."""
    from scipy.stats import rankdata

    return (rankdata(test) - 0.5) / max(len(test), 1)


def run_setting(X, S, C, groups, fold_of, seed=0, small: int = 500, texts=None) -> dict:
    """Out-of-fold scores for every policy (pooled on the validation-quantile scale) and their 50% picks.
    ``texts``: the tasks' texts, for routers that read words (``RouterKind.inputs``)."""
    from visroute.router.learn.kinds import ROUTER_KINDS

    inputs = {kind: ROUTER_KINDS[kind].features(texts, X) for kind in ROUTERS}
    n = len(S)
    cheap, strong = 1, 0  # table columns: [gpt-4, mixtral] (sorted names)
    costs = np.nanmean(C, axis=0)
    out = {name: {"gain": np.zeros(n), "pick50": np.zeros(n, bool)} for name in
           (*ROUTERS, "random", "dataset_prior", "oracle")}
    casc = {"success": np.zeros(n), "cost": np.zeros(n), "escalated": np.zeros(n, bool), "conf": np.zeros(n)}
    ens = {"success": np.zeros(n), "cost": np.zeros(n), "both": np.zeros(n, bool)}
    rng = np.random.default_rng(seed)  # the folds' train/validation splits only
    ties = np.random.default_rng([seed, 1])  # tie-breaks: a router added to the list moves no other's split
    for f in np.unique(fold_of):
        te = np.flatnonzero(fold_of == f)
        rest = rng.permutation(np.flatnonzero(fold_of != f))
        if len(rest) < small:  # calibrate on cross-fitted predictions of every non-test task
            va = tr = rest
            probs = {kind: list(crossfit(kind, inputs[kind][rest], S[rest], inputs[kind][te], seed=seed))
                     for kind in ROUTERS}
        else:
            n_val = int(round(0.15 * len(rest)))
            va, tr = rest[:n_val], rest[n_val:]
            probs = {kind: fit_predict(kind, inputs[kind][tr], S[tr], [inputs[kind][va], inputs[kind][te]])
                     for kind in ROUTERS}
        probs["dataset_prior"] = [dataset_prior(groups[tr], S[tr], groups[idx]) for idx in (va, te)]
        probs["random"] = [np.full((len(idx), 2), 0.5) for idx in (va, te)]
        probs["oracle"] = [S[va], S[te]]
        for name, (pv, pt) in probs.items():
            gv, gt = pv[:, strong] - pv[:, cheap], pt[:, strong] - pt[:, cheap]
            out[name]["gain"][te] = fold_rank(gt)
            # the calibrated 50% point; ties at the cut are broken at random (kNN, prior and oracle scores tie)
            jv, jt = gv + 1e-9 * ties.random(len(gv)), gt + 1e-9 * ties.random(len(gt))
            out[name]["pick50"][te] = jt > share_threshold(jv, 0.5)
        # cascade: Mixtral first; escalate when the MF router's predicted success of Mixtral is below t
        pv, pt = probs["mf"]
        budget = 0.5 * (costs[cheap] + costs[strong])
        t = calibrate_cascade(S[va], C[va], pv, [cheap, strong], budget)
        res = cascade(S[te], C[te], pt, [cheap, strong], t)
        casc["success"][te], casc["cost"][te] = res["success"], res["cost"]
        casc["escalated"][te], casc["conf"][te] = res["model"] == strong, fold_rank(pt[:, cheap])
        # ensemble: the MF router at its 50% cut; both models when its two predictions are within a margin
        cut = share_threshold(pv[:, strong] - pv[:, cheap], 0.5)
        lam = max(cut, 0.0) / (costs[strong] - costs[cheap])  # a negative cut: lambda 0 already sends more
        base_cost = ensemble(pv, S[va], C[va], costs, lam, -1.0)["cost"].mean()
        margin = calibrate_margin(pv, S[va], C[va], costs, lam, 1.1 * base_cost)
        res = ensemble(pt, S[te], C[te], costs, lam, margin)
        ens["success"][te], ens["cost"][te], ens["both"][te] = res["success"], res["cost"], res["both"]
    return {"policies": out, "cascade": casc, "ensemble": ens}


def summarise(res: dict, S, C) -> dict:
    cheap, strong = 1, 0
    rows = {}
    for name, r in res["policies"].items():
        m = two_model_metrics(r["gain"], S, C, cheap, strong)
        picks = np.where(r["pick50"], strong, cheap)
        idx = np.arange(len(S))
        m["calibrated"] = {"target_share": 0.5, "realised_share": float(r["pick50"].mean()),
                           "accuracy": float(S[idx, picks].mean()), "cost": float(C[idx, picks].mean())}
        rows[name] = m
    a_c, a_s = S[:, cheap].mean(), S[:, strong].mean()
    c_c, c_s = C[:, cheap].mean(), C[:, strong].mean()
    casc, ens = res["cascade"], res["ensemble"]
    accs, costs, _ = cascade_sweep(S, C, _conf_matrix(casc["conf"], cheap), [cheap, strong])
    zero = hull_area([0.0, 1.0], [a_c, a_s])  # the single-model hull: the chord between the two models
    for name, r in res["policies"].items():  # RouterBench's AIQ on the normalised-cost axis, beside APGR
        curve = threshold_curve(r["gain"], S[:, cheap], S[:, strong], C[:, cheap], C[:, strong])
        rows[name].update(aiq=hull_area((curve.cost - c_c) / (c_s - c_c), curve.accuracy))
        rows[name]["aiq_gain"] = rows[name]["aiq"] - zero
    rows["cascade"] = {**sweep_metrics(accs, costs, a_c, c_c, a_s, c_s), "aiq": hull_area((costs - c_c) / (c_s - c_c), accs),
                       "aiq_gain": hull_area((costs - c_c) / (c_s - c_c), accs) - zero, "calibrated": {
        "target_cost": float(0.5 * (c_c + c_s)), "accuracy": float(casc["success"].mean()),
        "cost": float(casc["cost"].mean()), "realised_share": float(casc["escalated"].mean())}}
    rows["ensemble"] = {"calibrated": {"accuracy": float(ens["success"].mean()), "cost": float(ens["cost"].mean()),
                                       "both_share": float(ens["both"].mean())}}
    # routers read at the cascade's / ensemble's own cost (the cost axis; fixed prices make it the share axis)
    for name in ("cascade", "ensemble"):
        x = (rows[name]["calibrated"]["cost"] - c_c) / (c_s - c_c)
        mf = _curve_at(res["policies"]["mf"]["gain"], S, C, cheap, strong, x)
        rows[name]["calibrated"]["mf_router_at_same_cost"] = mf
    return rows


def _conf_matrix(conf_cheap: np.ndarray, cheap: int) -> np.ndarray:
    m = np.full((len(conf_cheap), 2), np.nan)
    m[:, cheap] = conf_cheap
    return m


def _curve_at(gain, S, C, cheap, strong, x) -> float:
    from visroute.router.evaluate.metrics import threshold_curve

    return threshold_curve(gain, S[:, cheap], S[:, strong], C[:, cheap], C[:, strong]).clipped().at(min(max(x, 0), 1))[0]


def aggregate(runs: list[dict]) -> dict:
    """Mean (and std over repeats) of every numeric leaf."""
    def walk(items):
        first = items[0]
        if isinstance(first, dict):
            return {k: walk([it[k] for it in items]) for k in first}
        vals = [v for v in items if isinstance(v, (int, float)) and v is not None]
        if len(vals) == len(items) and vals:
            return {"mean": float(np.mean(vals)), "std": float(np.std(vals))} if len(items) > 1 else float(vals[0])
        return items[0] if len(items) == 1 else None
    return walk(runs)


def leakage(emb: np.ndarray, fold_of: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """Rows whose text nearly repeats a row in another fold (cosine >= threshold)."""
    sims = emb @ emb.T
    other = fold_of[:, None] != fold_of[None, :]
    return (np.where(other, sims, -1).max(axis=1) >= threshold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routellm", help="RouteLLM checkout or bare git mirror")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--llm-router", help="model spec of a chat model to route with (e.g. openai-compatible:URL#m)")
    ap.add_argument("--llm-prices", help="price table (JSON) for the LLM router's own calls")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "routing_real.json"))
    ap.add_argument("--routerbench", help="RouterDC's routerbench_zs folder or a bare git mirror of RouterDC: also "
                    "run the 11-model ARC-Challenge/MBPP benchmark (benchmarks/routing_multi.py)")
    ap.add_argument("--skip-routellm", action="store_true", help="only the RouterBench part")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for AIQ intervals")
    ap.add_argument("--smoke", action="store_true", help="seconds: the committed fixtures, 2 folds, 1 repeat; "
                    "results go to a temporary folder")
    a = ap.parse_args()
    if a.smoke:
        a.folds, a.repeats, a.bootstrap = 2, 1, 20
        a.routellm = str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "routellm")
        a.out = str(Path(tempfile.mkdtemp(prefix="routing-real-smoke-")) / "routing_real.json")
    t0 = time.time()
    result = {} if a.skip_routellm else run_routellm(a, t0)
    if a.routerbench or a.smoke:
        import routing_multi as rm

        routers = ("logistic", "knn", "lexical") if a.smoke else rm.ROUTERS
        result["routerbench"] = rm.run(rm.find_files(a.routerbench, a.smoke), a.folds, a.repeats, a.bootstrap, routers)
        print("\n".join(rm.table_lines(result["routerbench"])))
        print(f"routerbench done in {time.time() - t0:.0f}s", file=sys.stderr)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    lines = print_table(result) if "settings" in result else []
    if "routerbench" in result:
        lines += ["", *rm.table_lines(result["routerbench"])]
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({time.time() - t0:.0f}s)", file=sys.stderr)


def run_routellm(a, t0: float) -> dict:
    """The RouteLLM two-model part (GSM8K, MT-Bench)."""
    root = find_checkout(a.routellm)
    records, summary = read_routellm(root)
    table = build_table(records, split_by="sample")
    assert table.models[0].startswith("gpt-4") and "Mixtral" in table.models[1], table.models  # strong, cheap
    emb_all = TextEmbedder().embed(list(table.text))
    result = {"source": portable(summary, root), "models": table.models, "router_kw": ROUTER_KW, "folds": a.folds,
              "repeats": a.repeats, "settings": {}}
    for bench in ("gsm8k", "mt-bench"):
        sel = np.flatnonzero((table.dataset == "gsm8k") if bench == "gsm8k" else np.char.startswith(
            table.dataset.astype(str), "mt-bench/"))
        X, S, C, groups = emb_all[sel], table.success[sel].astype(np.float64), table.cost[sel].astype(np.float64), \
            table.dataset[sel]
        texts = np.asarray(table.text, dtype=object)[sel]
        runs = []
        for r in range(a.repeats):
            fold_of = folds_random(len(sel), a.folds, seed=r)
            runs.append(summarise(run_setting(X, S, C, groups, fold_of, seed=r, texts=texts), S, C))
        result["settings"][f"{bench}/random"] = aggregate(runs)
        leak = leakage(X, folds_random(len(sel), a.folds, seed=0))
        result["settings"][f"{bench}/random"]["leakage"] = {"near_duplicate_rows": int(leak.sum()), "rows": len(sel)}
        if leak.any():
            res = run_setting(X, S, C, groups, folds_random(len(sel), a.folds, seed=0), texts=texts)
            keep = ~leak
            deduped = {n: two_model_metrics(res["policies"][n]["gain"][keep], S[keep], C[keep], 1, 0)["apgr"]
                       for n in ROUTERS}
            full = {n: two_model_metrics(res["policies"][n]["gain"], S, C, 1, 0)["apgr"] for n in ROUTERS}
            result["settings"][f"{bench}/random"]["leakage"].update(apgr_all=full, apgr_without_near_duplicates=deduped)
        if bench == "mt-bench" and not a.smoke:
            result["settings"][f"{bench}/topic"] = summarise(run_setting(X, S, C, groups, folds_topic(groups),
                                                                         texts=texts), S, C)
        if bench == "gsm8k" and not a.smoke:
            result["add_model"] = add_model(X, S, C)
        print(f"{bench} done in {time.time() - t0:.0f}s", file=sys.stderr)
    if a.llm_router:
        result["llm_router"] = run_llm_router(table, a.llm_router, a.llm_prices)
    else:
        result["llm_router"] = "not run: no --llm-router endpoint was given (no OpenAI-compatible server is reachable here)"
    return result


def add_model(X, S, C) -> dict:
    """Mixtral-only MF router + GPT-4 added from 300 tasks vs MF retrained on both (GSM8K, one random split)."""
    from visroute.router.evaluate.hierarchy import add_model_vs_retrain

    fold_of = folds_random(len(X), 5, seed=0)
    tr, te = fold_of != 0, fold_of == 0
    return add_model_vs_retrain(X[tr], S[tr].astype(np.float32), X[te], S[te], new=0, n_tasks=300,
                                test_cost=C[te], expected_costs=np.nanmean(C, axis=0), batch_size=64)


def run_llm_router(table, spec: str, prices) -> dict:
    """The LLM router on every task. Its model cards hold accuracies over all tasks, not out-of-fold ones: an
    advantage the learned routers do not get, stated beside its numbers."""
    from visroute.router.learn.llm_router import LLMRouter, model_cards

    table.split[:] = "train"
    router = LLMRouter.from_spec(spec, model_cards(table), prices)
    out = router.route(table.text, table.dataset)
    rows = np.arange(len(table))
    return {"accuracy": float(np.nanmean(table.success[rows, out["picks"]])),
            "cost": float(np.nanmean(table.cost[rows, out["picks"]]) + np.nanmean(out["router_cost"])),
            "strong_share": float(np.mean(out["picks"] == 0)), "unparsed": out["unparsed"],
            "note": "model cards from all tasks (not out-of-fold)"}


def _fmt(v, pct=False) -> str:
    if isinstance(v, dict) and "mean" in v:
        return f"{v['mean'] * (100 if pct else 1):.{1 if pct else 3}f}±{v['std'] * (100 if pct else 1):.{1 if pct else 3}f}"
    if v is None:
        return "-"
    return f"{v * (100 if pct else 1):.{1 if pct else 3}f}"


def print_table(result: dict) -> list[str]:
    lines = [f"{'setting':<16} {'policy':<14} {'AIQ':>12} {'AIQ gain':>13} {'APGR':>12} {'APGR-10bin':>12} {'CPT50%':>11} "
             f"{'CPT80%':>11} {'acc@50%':>12} {'cost@50%':>9} {'calib. share':>12}"]
    for setting, rows in result["settings"].items():
        for name, m in rows.items():
            if name == "leakage" or "apgr" not in m:
                continue
            cal = m.get("calibrated", {})
            cost = m.get("cost_at_50")
            cost = cost["mean"] if isinstance(cost, dict) else cost
            lines.append(f"{setting:<16} {name:<14} {_fmt(m.get('aiq')):>12} {_fmt(m.get('aiq_gain')):>13} "
                         f"{_fmt(m['apgr']):>12} {_fmt(m.get('apgr_discrete')):>12} "
                         f"{_fmt(m['cpt50'], True):>11} {_fmt(m['cpt80'], True):>11} "
                         f"{_fmt(m.get('accuracy_at_50')):>12} {cost if cost is None else format(cost, '.4f'):>9} "
                         f"{_fmt(cal.get('realised_share'), True):>12}")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
