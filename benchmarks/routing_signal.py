"""Why routers gain so little over the single-model hull on RouterBench ARC-Challenge and MBPP: how much the
task text predicts, and what each candidate change does, on repeated seeds.

    python benchmarks/routing_signal.py --routerbench PATH [--repeats 3] [--folds 5] [--part all|signal|bounds|scorer]
                                         [--smoke]

PATH as for ``routing_real.py --routerbench`` (a folder with the four ARC/MBPP CSVs or a bare git mirror of
RouterDC; only those four files are opened, Winogrande never). Every figure is out-of-fold (K random folds per
seed) and scored as RouterBench's AIQ gain over the single-model hull (``aiq.hull_area``, no bootstrap: the
spread over seeds is the interval). Printed:

- the signal: per model, the ROC AUC of the logistic router's out-of-fold predicted success, and the
  correlation between the predicted and the realised mean success over models (task difficulty);
- the oracle's gain (the ceiling) and each variant's gain and cost to reach the best model's accuracy:
  logistic, MLP, their average, logistic with text length added as a feature and scikit-learn's logistic
  regression (C=0.1) on MiniLM + TF-IDF + length ("sk-logistic +tfidf"), each with raw predictions and
  under the default decision rule (``rules.decision_rule``: shrink halfway to each model's training accuracy,
  cap models off the training cost-accuracy chain), and the two halves of the rule alone; every rule is fitted
  on the training folds only (each one default configuration, the same for both datasets);
- an agreement cascade (RouterBench records carry each model's answer): along sub-chains of at most three
  models of each fold's training cost-accuracy chain (its cheapest and its four most accurate models, by
  position), stop when the answer agrees with every earlier answer, paying for every call. Its confidence needs no router; it shows what a model-side
  signal adds.

``--part bounds`` (also in ``all``) prints the UPPER BOUNDS of the answer-agreement strategies, IN-SAMPLE (every
agreement cascade and 2-of-3 vote scored on the tasks it is picked on: a ceiling, not a result; ``_bounds.py``),
and how much of it survives picking the configurations on one random half of the tasks and scoring on the other.
Answers are the importer's ``answer`` column (each response's first line, upper case).

``--part scorer`` (also in ``all``) prints, out of fold, cascades whose confidence is an answer-aware scorer
(FrugalGPT's: P(right | task, answer) from MiniLM embeddings of the task and of the whole response, logistic
regression trained on the other folds; ``_scorer.py``) beside the same scorer reading the task alone, along each
fold's training chain and along every two of its models (pooled): whether reading the answer helps a cascade.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

import _bounds
import _scorer
import routing_multi as rm
from visroute.router.decide.rules import apply_rule, choose, decision_rule, lambda_grid
from visroute.router.decide.strategies import pareto_chain
from visroute.router.evaluate.aiq import hull_area, hull_cost_to, oracle_picks, sweep_outcomes, upper_hull
from visroute.router.learn.kinds import make_router


def gain_and_cost(Sp, Cp, S, C, zero: float) -> tuple[float, float | None]:
    """AIQ gain over ``zero`` and the cost to reach the best model's accuracy (share of its cost)."""
    acc, mc = S.mean(0), C.mean(0)
    lo, span = mc.min(), mc.max() - mc.min()
    x, a = (Cp.mean(1) - lo) / span, Sp.mean(1)
    hx, hy = upper_hull(np.maximum(x, 0), a)
    b = int(np.argmax(acc))
    xr = hull_cost_to(hx, hy, acc[b])
    return hull_area(x, a) - zero, None if xr is None else float((lo + xr * span) / mc[b])


def single_hull(S, C) -> float:
    """The single models' AIQ: the area under their hull, cost normalised between the cheapest and the dearest."""
    return hull_area((C.mean(0) - C.mean(0).min()) / np.ptp(C.mean(0)), S.mean(0))


def complete_rows(table, dataset: str) -> tuple[np.ndarray, int]:
    """The dataset's rows with every model's outcome and cost, and how many were left out: a task missing one
    would count that call as free and failed."""
    sel = np.flatnonzero(table.dataset == dataset)
    full = np.isfinite(table.success[sel].astype(float)).all(1) & np.isfinite(table.cost[sel].astype(float)).all(1)
    return sel[full], int((~full).sum())


def gain_rows(res: dict[str, list], head: str, width: int) -> list[str]:
    """A header and one row per policy: its AIQ gain mean±std over seeds and its cost to reach the best model."""
    lines = [f"  {head:<{width}} {'AIQ gain':>16} {'cost to best (repeats reached)':>32}"]
    for name, vals in res.items():
        g = np.array([v[0] for v in vals])
        reach = [v[1] for v in vals if v[1] is not None]
        cost = f"{np.mean(reach):.0%} ({len(reach)}/{len(vals)})" if reach else f"never (0/{len(vals)})"
        lines.append(f"  {name:<{width}} {g.mean():+.4f}±{g.std():.4f} {cost:>32}")
    return lines


def lam_curve(P, S, C, costs):
    return sweep_outcomes(np.stack([choose(P, costs, lam) for lam in lambda_grid(P, costs)]), S, C)


def oof(kind, X, S, fold_of, seed) -> np.ndarray:
    P = np.zeros(S.shape)
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        kw = dict(rm.ROUTER_KW[kind], **({"seed": seed} if kind != "knn" else {}))
        P[te] = make_router(kind, **kw).fit(X[tr], S[tr]).predict_proba(X[te])
    return P


def tfidf_logistic_oof(X, length, texts, S, fold_of, C: float = 0.1) -> np.ndarray:
    """Out-of-fold success per model from scikit-learn's L2 logistic regression (``C``) on MiniLM + TF-IDF
    (1-2-grams, SVD to 128 dimensions, fitted on the training folds) + log length: what word features add."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    texts = np.asarray(texts, dtype=object)
    P = np.zeros(S.shape)
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts[tr])
        svd = TruncatedSVD(min(128, vec.transform(texts[tr]).shape[1] - 1), random_state=0).fit(vec.transform(texts[tr]))
        lz = (length - length[tr].mean()) / (length[tr].std() or 1)
        F = [np.hstack([X[m], svd.transform(vec.transform(texts[m])), lz[m]]) for m in (tr, te)]
        for j in range(S.shape[1]):
            y = S[tr, j] >= 0.5
            P[te, j] = (LogisticRegression(C=C, max_iter=2000).fit(F[0], y).predict_proba(F[1])[:, 1]
                        if 0 < y.mean() < 1 else y.mean())
    return P


def by_fold_rule(P, S, C, fold_of, shrink: float, chain_only: bool) -> np.ndarray:
    """``P`` under a decision rule fitted on each fold's training folds (``rules.decision_rule``); without
    ``chain_only`` every model counts as on the chain (no cap)."""
    out = np.zeros_like(P)
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        costs = np.nanmean(C[tr], axis=0)
        rule = decision_rule(S[tr], costs, shrink)
        if not chain_only:
            rule["chain"] = list(range(S.shape[1]))
        out[te] = apply_rule(P[te], rule, costs)
    return out


def agreement_cascade(S, C, A, chain) -> tuple[np.ndarray, np.ndarray]:
    """Per task (success, cost of every call): stop at the first stage (from the second on) whose answer equals
    every earlier one; the last stage always answers."""
    n = len(S)
    done, succ, cost = np.zeros(n, bool), np.zeros(n), np.zeros(n)
    for k, j in enumerate(chain):
        act = ~done
        cost[act] += C[act, j]
        agree = np.all([A[:, i] == A[:, j] for i in chain[:k]], axis=0) if k else np.zeros(n, bool)
        stop = act & ((agree & (A[:, j] != "")) | (k == len(chain) - 1))
        succ[stop], done = S[stop, j], done | stop
    return succ, cost


def fold_chain(S, C, fold_of, f) -> list[int]:
    return pareto_chain(np.nanmean(C[fold_of != f], 0), np.nanmean(S[fold_of != f], 0))


def positions(folds: int) -> list[tuple[int, ...]]:
    """The agreement cascade's operating points as positions on each fold's training chain: the cheapest (0) and
    the four most accurate (-4..-1), every sub-chain of at most three of them in cost order."""
    pool = (0, -4, -3, -2, -1)
    return [c for L in (1, 2, 3) for c in itertools.combinations(pool, L)]


def agreement_by_fold(S, C, A, fold_of, pos) -> tuple[np.ndarray, np.ndarray]:
    """One operating point of the agreement cascade: per fold, the sub-chain at ``pos`` of its training chain."""
    succ, cost = np.zeros(len(S)), np.zeros(len(S))
    for f in np.unique(fold_of):
        te = fold_of == f
        chain = fold_chain(S, C, fold_of, f)
        sub = list(dict.fromkeys(chain[p] for p in pos if -len(chain) <= p < len(chain)))
        sub.sort(key=chain.index)
        succ[te], cost[te] = agreement_cascade(S[te], C[te], A[te], sub)
    return succ, cost


def load(paths):
    """The routing table of the given CSVs (one row per task; ``answer`` holds each model's answer key)."""
    from visroute.router.data.routerbench import read_routerbench
    from visroute.router.data.table import build_table

    records, _ = read_routerbench(paths)
    return build_table(records, split_by="sample", val_fraction=0.0, test_fraction=0.0)


def signal(table, folds: int, repeats: int) -> list[str]:
    from visroute.router.data.embed import TextEmbedder
    from visroute.router.data.texts import detect_rule
    from sklearn.metrics import roc_auc_score

    X_all = TextEmbedder().embed(detect_rule(table.text, table.dataset).apply_all(table.text))
    lines = []
    for d in rm.DATASETS:
        sel = np.flatnonzero(table.dataset == d)
        if not len(sel):
            continue
        X, S, C = X_all[sel], np.nan_to_num(table.success[sel].astype(float)), np.nan_to_num(table.cost[sel].astype(float))
        A = table.answer[sel]
        length = np.log1p([len(t) for t in table.text[sel]])[:, None]
        Xl = np.hstack([X, (length - length.mean()) / (length.std() or 1)]).astype(np.float32)
        zero = single_hull(S, C)
        res: dict[str, list] = {}
        aucs, diff = [], []
        costs = C.mean(0)
        chains = set()
        for seed in range(repeats):
            fold_of = np.random.default_rng(seed).permutation(len(S)) % folds
            P = {k: oof(k, X, S, fold_of, seed) for k in ("logistic", "mlp")}
            P["avg(logistic,mlp)"] = (P["logistic"] + P["mlp"]) / 2
            P["logistic +length"] = oof("logistic", Xl, S, fold_of, seed)
            P["sk-logistic +tfidf"] = tfidf_logistic_oof(X, length, table.text[sel], S, fold_of)
            variants = {}
            for name, Pv in P.items():  # each decision rule from the training folds only
                for label, shrink, chain_only in (("", 1.0, False), (" rule", 0.5, True)):
                    variants[name + label] = by_fold_rule(Pv, S, C, fold_of, shrink, chain_only)
            variants["logistic shrink only"] = by_fold_rule(P["logistic"], S, C, fold_of, 0.5, False)
            variants["logistic chain only"] = by_fold_rule(P["logistic"], S, C, fold_of, 1.0, True)
            for name, Pv in variants.items():
                res.setdefault(name, []).append(gain_and_cost(*lam_curve(Pv, S, C, costs), S, C, zero))
            aucs.append([roc_auc_score(S[:, j], P["logistic"][:, j]) if 0 < S[:, j].mean() < 1 else np.nan
                         for j in range(S.shape[1])])
            diff.append(np.corrcoef(P["logistic"].mean(1), S.mean(1))[0, 1])
            chains |= {tuple(fold_chain(S, C, fold_of, f)) for f in range(folds)}
            outs = [agreement_by_fold(S, C, A, fold_of, pos) for pos in positions(folds)]
            res.setdefault("agreement cascade", []).append(gain_and_cost(*map(np.array, zip(*outs)), S, C, zero))
        orc = gain_and_cost(*sweep_outcomes(oracle_picks(S, C), S, C), S, C, zero)
        lines += [f"{d}: {len(S)} tasks, single-model hull AIQ {zero:.3f}, oracle gain {orc[0]:+.3f} "
                  f"(best accuracy at {orc[1]:.0%} of its cost)",
                  "  logistic out-of-fold AUC per model: " + " ".join(
                      f"{m.split('/')[-1][:10]}={a:.2f}" for m, a in zip(table.models, np.nanmean(aucs, 0))),
                  f"  corr(predicted, realised mean success over models): {np.mean(diff):.2f}",
                  f"  training-fold cost-accuracy chains: {sorted(chains)}"] + gain_rows(res, "variant", 22)
    lines.append(f"(mean±std over {repeats} seeds of {folds}-fold out-of-fold predictions)")
    return lines


def upper_bounds(table, seeds: int) -> list[str]:
    """The IN-SAMPLE ceiling of the answer-agreement strategies per dataset (``_bounds``): every agreement
    cascade and 2-of-3 vote scored on the tasks it is picked on, then how much survives picking on one half."""
    lines = ["UPPER BOUNDS, IN-SAMPLE: every configuration is scored on the very tasks it is picked on, knowing their",
             "outcomes; an optimistic ceiling of what these strategies can reach here, NOT a result a router achieves."]
    for d in rm.DATASETS:
        sel, left_out = complete_rows(table, d)
        if len(sel) < 4:
            continue
        S, C, A = table.success[sel].astype(float), table.cost[sel].astype(float), table.answer[sel]
        short = [m.split("/")[-1][:12] for m in table.models]
        labels, Ss, Cs = _bounds.configurations(S, C, A)
        acc, mc = S.mean(0), C.mean(0)
        b = int(max(range(len(acc)), key=lambda j: (acc[j], -mc[j])))
        lines += [f"{d}: {len(sel)} tasks with every model's outcome ({left_out} left out), single-model "
                  f"hull AIQ {_bounds.frontier([], [], S, C)['zero']:.3f}, best model {short[b]} "
                  f"(accuracy {acc[b]:.3f}, ${mc[b]:.5f} per task); {np.mean(A != ''):.0%} of the cells carry an answer",
                  f"  {'family':<26} {'configs':>7} {'AIQ gain':>9} {'largest gap (at x)':>19} {'cost to best':>13}"]
        families = {f: [i for i, (g, _) in enumerate(labels) if g == f] for f in (*_bounds.VARIANTS, "vote 2 of 3")}
        families["agreement, both rules"] = [i for i, (g, _) in enumerate(labels) if g in _bounds.VARIANTS]
        families["all of the above"] = list(range(len(labels)))
        for name, idx in families.items():
            r = _bounds.frontier(Ss[idx].mean(1), Cs[idx].mean(1), S, C)
            to = "never" if r["cost_to_best"] is None else f"{r['cost_to_best']:.0%}"
            lines.append(f"  {name:<26} {len(idx):>7} {r['gain']:>+9.4f} {r['gap']:>+10.3f} ({r['gap_at']:.2f}) {to:>13}")
        r = _bounds.frontier(Ss.mean(1), Cs.mean(1), S, C)
        span = mc.max() - mc.min()
        vert = {(round(Cs[i].mean(), 12), round(Ss[i].mean(), 12)): i for i in r["vertices"][::-1]}  # first label
        top = int(np.argmax(Ss.mean(1) - 1e-9 * Cs.mean(1)))
        lines += ["  its hull (all of the above) above the single models: " + ", ".join(
                      f"{labels[i][0]} {'>'.join(short[j] for j in labels[i][1])} "
                      f"(x={(Cs[i].mean() - mc.min()) / span:.2f}, acc={Ss[i].mean():.3f})" for i in sorted(vert.values())),
                  f"  most accurate configuration: {labels[top][0]} {'>'.join(short[j] for j in labels[top][1])}, "
                  f"accuracy {Ss[top].mean():.3f} at {Cs[top].mean() / mc[b]:.0%} of the best model's cost"]
        ho = _bounds.held_out(Ss, Cs, S, C, seeds)
        lines.append(f"  picked on one random half, scored on the other ({len(ho)} splits): AIQ gain "
                     f"{ho[:, 0].mean():+.4f}±{ho[:, 0].std():.4f} (in-sample on the scoring half: "
                     f"{ho[:, 1].mean():+.4f}±{ho[:, 1].std():.4f})")
        goal = r["gain"] >= 0.02 and r["cost_to_best"] is not None and r["cost_to_best"] <= 0.6
        lines.append(f"  issue 23's goal (gain >= 0.02 and the best model's accuracy at <= 60% of its cost) "
                     f"{'within' if goal else 'OUT OF'} reach of this ceiling")
    lines.append("(cascades: 2 or 3 models in cost order, or those then any other model last; 'all agree' stops "
                 "when a stage's answer equals every earlier one, 'majority' when it equals at least half; every "
                 "call paid. x: normalised cost, 0 = the cheapest model, 1 = the dearest)")
    return lines


def scorer(table, paths, folds: int, repeats: int) -> list[str]:
    """Out-of-fold cascades on an answer-aware scorer and on a task-only one (``_scorer``), per dataset."""
    from visroute.router.data.embed import TextEmbedder
    from visroute.router.data.texts import detect_rule

    emb = TextEmbedder()
    texts = detect_rule(table.text, table.dataset).apply_all(table.text)
    R = _scorer.responses(paths, table)
    lines = ["ANSWER-AWARE SCORER (out of fold): a cascade stops when P(right | task, answer) reaches the threshold"]
    for d in rm.DATASETS:
        sel, _ = complete_rows(table, d)
        if len(sel) < 2 * folds:
            continue
        S, C = table.success[sel].astype(float), table.cost[sel].astype(float)
        Xt = emb.embed([texts[i] for i in sel])
        Xa = {j: emb.embed([str(r)[:2000] for r in R[sel, j]]) for j in range(S.shape[1])}
        zero = single_hull(S, C)
        res: dict[str, list] = {}
        for seed in range(repeats):
            fold_of = np.random.default_rng(seed).permutation(len(S)) % folds
            for reads, P in (("task + answer", _scorer.scorer_oof(Xt, Xa, S, fold_of)),
                             ("task only", _scorer.scorer_oof(Xt, None, S, fold_of))):
                for along, out in (("chain", rm.cascade_outcomes(S, C, P, fold_of)),
                                   ("every two", _scorer.pair_cascades(S, C, P, fold_of))):
                    res.setdefault(f"{reads}, {along}", []).append(gain_and_cost(*out, S, C, zero))
        lines += [f"{d}: {len(S)} tasks, single-model hull AIQ {zero:.3f}; "
                  f"{np.mean(R[sel] != ''):.0%} of the cells carry a response"] + gain_rows(res, "scorer, stages", 26)
    lines.append(f"(mean±std over {repeats} seeds of {folds}-fold out-of-fold scorers; every call paid)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routerbench", help="RouterDC's routerbench_zs folder or a bare git mirror of RouterDC")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="seeds of the out-of-fold runs and of the half splits")
    ap.add_argument("--part", choices=("all", "signal", "bounds", "scorer"), default="all",
                    help="signal: the out-of-fold routers; bounds: the in-sample ceiling of the agreement strategies; "
                         "scorer: cascades on an answer-aware scorer")
    ap.add_argument("--smoke", action="store_true", help="the committed fixture, 2 folds, 1 repeat")
    a = ap.parse_args()
    if a.smoke:
        a.folds, a.repeats = 2, 1
    elif not a.routerbench:
        sys.exit("--routerbench PATH is required (or --smoke)")
    if a.folds < 2 or a.repeats < 1:
        sys.exit("--folds must be >= 2 and --repeats >= 1")
    paths = rm.find_files(a.routerbench, a.smoke)
    table = load(paths)
    lines = (signal(table, a.folds, a.repeats) if a.part in ("all", "signal") else []) + \
        (upper_bounds(table, a.repeats) if a.part in ("all", "bounds") else []) + \
        (scorer(table, paths, a.folds, a.repeats) if a.part in ("all", "scorer") else [])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
