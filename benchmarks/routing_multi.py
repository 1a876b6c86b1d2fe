"""Routing among 11 LLMs on RouterBench's ARC-Challenge and MBPP (zero-shot, real per-call costs): every router,
strategy and baseline on RouterBench's AIQ (area under the accuracy/normalised-cost hull), beside the single-model
hull, with RouteLLM's APGR and CPT on the same curves. Run through ``benchmarks/routing_real.py --routerbench``.

Data: RouterDC's ``datasets/routerbench_zs`` CSVs (a folder holding them, or a bare git mirror of
github.com/shuhao02/RouterDC, read with ``git show``). Only the ARC-Challenge and MBPP files are opened; the
Winogrande files (a reserved test set) never are. ``--smoke`` uses the committed fixture.

Protocol (one default configuration for every dataset, nothing tuned to these): records from
``read_routerbench``; each dataset's shared prefix/suffix found and stripped as ``route build`` does; MiniLM
embeddings; K random folds, repeated with different seeds. For each fold the routers train on the other folds
and predict the fold's tasks; the pooled out-of-fold predictions give each policy's operating points (lambda
sweep of ``choose`` with the training folds' mean costs), and ``aiq_report`` scores them all on the same
bootstrap resamples. Policies: logistic, kNN, MLP, MF and lexical routers (the lexical one also reads the
words of the stripped texts), each deciding under the bundle's default decision rule (``rules.decision_rule``:
predictions shrunk halfway to each model's training accuracy, models off the training cost-accuracy chain
capped), and the logistic and lexical routers without that rule ("no rule"); kNN on the texts kept whole (what
a user got before prefix stripping); the dataset prior (per dataset a constant: it can only pick single
models); a cascade along the cost-accuracy chain of the training folds whose confidence is the MF router's
predicted success of the model that just answered, and with it the cascades stopping where a model's answer agrees
with the earlier ones along triples of the chain (``cascade(+agreement)``: the points ``route train
--strategy cascade`` calibrates over when the records carry answers, as RouterBench's do), each swept over its
threshold and paying for every call; the hierarchy (cost tiers, then the model); the zero router (single-model
hull) and the oracle.
"""

from __future__ import annotations

import itertools
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from visroute.router.evaluate.aiq import aiq_report, sweep_outcomes
from visroute.router.decide.hierarchy import family_targets, hierarchy_picks, model_families
from visroute.router.decide.rules import apply_rule, choose, decision_rule, lambda_grid
from visroute.router.evaluate.metrics import sweep_metrics
from visroute.router.evaluate.policies import dataset_prior
from visroute.router.learn.kinds import make_router
from visroute.router.decide.strategies import AGREEMENT_POSITIONS, agreement_confidence, cascade, pareto_chain

FILES = ("arc_challenge_train.csv", "arc_challenge_test.csv", "mbpp_train.csv", "mbpp_test.csv")
DATASETS = ("arc-challenge", "mbpp")
ROUTERS = ("logistic", "knn", "mlp", "mf", "lexical")
RAW = "logistic (no rule)"
NO_RULE = {"logistic": RAW, "lexical": "lexical (no rule)"}  # routers also reported on their raw predictions
ROUTER_KW = {"knn": {}, "logistic": {"batch_size": 64}, "mlp": {"batch_size": 64}, "mf": {"batch_size": 64},
             "lexical": {}}
FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "routerbench"


def find_files(given: str | None, smoke: bool) -> list[Path]:
    """The ARC-Challenge and MBPP CSVs: the fixture (smoke), a folder holding them, or a RouterDC git mirror."""
    if smoke:
        return sorted(FIXTURE.glob("*.csv"))
    p = Path(given).expanduser()
    if all((p / f).is_file() for f in FILES):
        return [p / f for f in FILES]
    if (p / "HEAD").is_file() and (p / "objects").is_dir():
        out = Path(tempfile.mkdtemp(prefix="routerbench-"))
        for f in FILES:  # named one by one: no other file of the mirror is read
            blob = subprocess.run(["git", "--git-dir", str(p), "show", f"HEAD:datasets/routerbench_zs/{f}"],
                                  capture_output=True, check=True).stdout
            (out / f).write_bytes(blob)
        return [out / f for f in FILES]
    raise SystemExit(f"{p} holds neither {', '.join(FILES)} nor a git mirror of github.com/shuhao02/RouterDC")


def router_inputs(kind: str, X, texts):
    """What a router kind takes as X (``RouterKind.inputs``): the embeddings, or texts and embeddings together
    (rows selectable with ``[idx]`` either way)."""
    from visroute.router.learn.kinds import ROUTER_KINDS

    return ROUTER_KINDS[kind].features(texts, X)


def oof_predictions(X, Xraw, S, C, groups, fold_of, routers, seed: int, texts=None) -> dict[str, np.ndarray]:
    """Out-of-fold predicted success per policy (tasks x models), as a trained bundle decides on it: under the
    decision rule of its training folds (``rules.decision_rule``: shrink to the prior, cap models off the
    chain). ``NO_RULE``: the logistic and lexical routers' raw predictions, the decision before that rule.
    ``texts``: the task texts the embeddings were made from (the lexical router reads their words)."""
    raws = [NO_RULE[k] for k in routers if k in NO_RULE]
    out = {k: np.zeros(S.shape) for k in (*routers, *raws, "knn_whole_text", "dataset_prior")}
    inputs = {kind: router_inputs(kind, X, texts) for kind in routers}
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        costs = np.nanmean(C[tr], axis=0)
        rule = decision_rule(S[tr], costs)
        for kind in routers:
            kw = dict(ROUTER_KW[kind], **({"seed": seed} if kind != "knn" else {}))
            raw = make_router(kind, **kw).fit(inputs[kind][tr], S[tr]).predict_proba(inputs[kind][te])
            out[kind][te] = apply_rule(raw, rule, costs)
            if kind in NO_RULE:
                out[NO_RULE[kind]][te] = raw
        whole = make_router("knn").fit(Xraw[tr], S[tr]).predict_proba(Xraw[te])
        out["knn_whole_text"][te] = apply_rule(whole, rule, costs)
        out["dataset_prior"][te] = dataset_prior(groups[tr], S[tr], groups[te])
    return out


def agreement_outcomes(S, C, conf, answers, fold_of) -> tuple[np.ndarray, np.ndarray]:
    """The agreement cascades a trained cascade chooses among when the records carry answers
    (``plan.cascade_points``): per triple of ``AGREEMENT_POSITIONS`` on each fold's training chain and per
    threshold, per task (success, cost of every call), a stage after the first being as confident as the share
    of earlier answers it agrees with; the whole chain on ``conf`` is ``cascade_outcomes``."""
    combos = [pos for size in (2, 3) for pos in itertools.combinations(AGREEMENT_POSITIONS, size)]
    ts = np.r_[np.linspace(0, 1, 11), np.inf]
    Ss, Cs = np.zeros((len(combos) * len(ts), len(S))), np.zeros((len(combos) * len(ts), len(S)))
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        chain = pareto_chain(np.nanmean(C[tr], 0), np.nanmean(S[tr], 0))
        for k, pos in enumerate(combos):
            sub = sorted({chain[p] for p in pos if -len(chain) <= p < len(chain)}, key=chain.index)
            c = agreement_confidence(answers[te], sub, conf[te])
            for i, t in enumerate(ts):
                r = cascade(S[te], C[te], c, sub, t)
                Ss[k * len(ts) + i, te], Cs[k * len(ts) + i, te] = r["success"], r["cost"]
    return Ss, Cs


def cascade_outcomes(S, C, conf, fold_of, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold, per task (success, cost paid for every call) of the cascade along each fold's training
    chain (cheapest first, each next stage more accurate), stopping where the confidence reaches the threshold."""
    qs = np.unique(np.quantile(conf, np.linspace(0, 1, n)))
    ts = np.r_[-np.inf, qs, np.inf]
    Ss, Cs = np.zeros((len(ts), len(S))), np.zeros((len(ts), len(S)))
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        chain = pareto_chain(np.nanmean(C[tr], 0), np.nanmean(S[tr], 0))
        for i, t in enumerate(ts):
            r = cascade(S[te], C[te], conf[te], chain, t)
            Ss[i, te], Cs[i, te] = r["success"], r["cost"]
    return Ss, Cs


def hierarchy_outcomes(X, S, C, proba, fold_of, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The hierarchy strategy over its lambda sweep: families are the cost tiers (RouterBench records no
    pipelines), stage one a logistic router on "any model of the family succeeds" trained on the other folds,
    stage two ``proba`` (the logistic router under the decision rule); one call per task."""
    costs = np.nanmean(C, axis=0)
    fam = model_families([str(j) for j in range(S.shape[1])], {}, costs)
    pf = np.zeros((len(S), len(set(fam))))
    for f in np.unique(fold_of):
        te, tr = fold_of == f, fold_of != f
        pf[te] = make_router("logistic", **ROUTER_KW["logistic"], seed=seed).fit(
            X[tr], family_targets(S[tr], fam)).predict_proba(X[te])
    picks = np.stack([hierarchy_picks(pf, proba, costs, fam, lam) for lam in lambda_grid(proba, costs)])
    return sweep_outcomes(picks, S, C)


def evaluate(X, Xraw, S, C, groups, folds: int, seed: int, routers, n_boot: int, answers=None, texts=None) -> dict:
    fold_of = np.random.default_rng(seed).permutation(len(S)) % folds
    proba = oof_predictions(X, Xraw, S, C, groups, fold_of, routers, seed, texts)
    costs = np.nanmean(C, axis=0)  # expected cost per call; the lambda sweep spans every operating point anyway
    policies = {k: sweep_outcomes(np.stack([choose(p, costs, lam) for lam in lambda_grid(p, costs)]), S, C)
                for k, p in proba.items()}
    conf_router = "mf" if "mf" in proba else routers[-1]
    policies[f"cascade({conf_router})"] = cascade_outcomes(S, C, proba[conf_router], fold_of)
    if answers is not None and (answers != "").any():  # what a trained cascade calibrates over: both families
        agree = agreement_outcomes(S, C, proba[conf_router], answers, fold_of)
        whole = policies[f"cascade({conf_router})"]
        policies["cascade(+agreement)"] = (np.vstack([whole[0], agree[0]]), np.vstack([whole[1], agree[1]]))
    if "logistic" in proba:
        policies["hierarchy"] = hierarchy_outcomes(X, S, C, proba["logistic"], fold_of, seed)
    rep = aiq_report(policies, S, C, n_boot=n_boot, seed=seed)
    acc, mc = S.mean(0), C.mean(0)
    best, cheap = int(np.argmax(acc)), int(np.argmin(mc))
    for name, (Sp, Cp) in policies.items():
        m = sweep_metrics(Sp.mean(1), Cp.mean(1), acc[cheap], mc[cheap], acc[best], mc[best])
        rep[name].update(apgr=m["apgr"], cpt50=m["cpt50"], cpt80=m["cpt80"])
    for name in ("zero_router", "oracle"):
        rep[name].update(apgr=None, cpt50=None, cpt80=None)
    for r in rep.values():
        if isinstance(r, dict):
            r.pop("hull", None)
    return rep


def run(paths, folds: int = 5, repeats: int = 3, n_boot: int = 200, routers=ROUTERS) -> dict:
    from visroute.router.data.embed import TextEmbedder
    from visroute.router.data.routerbench import read_routerbench
    from visroute.router.data.table import build_table
    from visroute.router.data.texts import detect_rule

    records, summary = read_routerbench(paths)
    table = build_table(records, split_by="sample", val_fraction=0.0, test_fraction=0.0)
    rule = detect_rule(table.text, table.dataset)
    emb = TextEmbedder()
    texts = np.asarray(rule.apply_all(table.text), dtype=object)  # what a bundle's router sees, words included
    X_all, Xraw_all = emb.embed(list(texts)), emb.embed(list(table.text))
    out = {"source": {"files": [p.name for p in paths], "records": summary["records"], "tasks": summary["tasks"],
                      "skipped_cells": summary["skipped_cells"]},
           "models": table.models, "folds": folds, "repeats": repeats, "n_boot": n_boot, "router_kw": ROUTER_KW,
           "shared_prefix_chars": {d: len(p) for d, (p, s) in rule.affixes.items()}, "datasets": {}}
    for d in DATASETS:
        sel = np.flatnonzero(table.dataset == d)
        if not len(sel):
            continue
        S = np.nan_to_num(table.success[sel].astype(np.float64))
        C = np.nan_to_num(table.cost[sel].astype(np.float64))
        runs = [evaluate(X_all[sel], Xraw_all[sel], S, C, table.dataset[sel], folds, r, routers, n_boot,
                         table.answer[sel], texts[sel]) for r in range(repeats)]
        out["datasets"][d] = {"tasks": int(len(sel)), "policies": aggregate(runs)}
    return out


def aggregate(runs: list[dict]) -> dict:
    """Per policy: mean and std over repeats of each figure, and the first repeat's bootstrap intervals."""
    keys = ("aiq", "gain", "accuracy_at_best_cost", "cost_to_best_accuracy", "apgr", "cpt50", "cpt80")
    out = {}
    for name in runs[0]:
        if not isinstance(runs[0][name], dict):
            continue
        r = {}
        for k in keys:
            vals = [run[name].get(k) for run in runs]
            ok = [v for v in vals if v is not None]
            r[k] = {"mean": float(np.mean(ok)), "std": float(np.std(ok)), "n": len(ok)} if ok else None
        r["aiq_ci"], r["gain_ci"] = runs[0][name].get("aiq_ci"), runs[0][name].get("gain_ci")
        out[name] = r
    return out


def table_lines(result: dict) -> list[str]:
    reps = result["repeats"]

    def f(v, pct=False, never=False):
        if v is None:
            return "never" if never else "-"
        seen = "" if v["n"] == reps else f" ({v['n']}/{reps})"  # reached in only some repeats
        return f"{v['mean']:.0%}{seen}" if pct else f"{v['mean']:.3f}±{v['std']:.3f}{seen}"

    lines = [f"{'dataset':<14} {'policy':<18} {'AIQ':>12} {'gain vs hull':>13} {'gain 95% CI':>17} "
             f"{'acc@best cost':>14} {'cost to best':>12} {'APGR':>12} {'CPT50':>6} {'CPT80':>6}"]
    for d, res in result["datasets"].items():
        for name, r in res["policies"].items():
            ci = r.get("gain_ci")
            lines.append(f"{d:<14} {name:<18} {f(r['aiq']):>12} {f(r['gain']):>13} "
                         f"{'' if not ci or name == 'zero_router' else f'[{ci[0]:+.3f}, {ci[1]:+.3f}]':>17} "
                         f"{f(r['accuracy_at_best_cost']):>14} {f(r['cost_to_best_accuracy'], True, True):>12} "
                         f"{f(r['apgr']):>12} {f(r['cpt50'], True):>6} {f(r['cpt80'], True):>6}")
    lines.append(f"(mean±std over {reps} repeats of {result['folds']}-fold out-of-fold predictions; gain CI: bootstrap "
                 f"of the first repeat, {result['n_boot']} resamples; cost to best: the cheapest cost on the hull at "
                 "the best single model's accuracy, as a share of that model's cost; (k/n): reached in k repeats)")
    return lines
