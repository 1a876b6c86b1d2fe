"""An answer-aware cascade scorer on RouterBench (``routing_signal.py --part scorer``): after a model answers, a
classifier trained on the other folds predicts whether that answer is right from the task and the answer text
together (FrugalGPT's scorer, here MiniLM embeddings of both and scikit-learn's logistic regression), and the
cascade stops when that probability reaches the threshold. Beside it, the same classifier on the task alone: what
reading the answer adds. Pure functions over arrays; ``responses`` reads the answer texts from the CSVs."""

from __future__ import annotations

import numpy as np

from visroute.router.decide.strategies import cascade, pareto_chain


def responses(paths, table) -> np.ndarray:
    """(tasks, models) each model's full response text for the table's rows (the stored one-element list unwrapped),
    "" where none; a repeated (eval_name, sample_id) keeps its first row's, as the importer does."""
    import pandas as pd

    from visroute.router.data.routerbench import prompt_text

    row = {(str(d), str(t)): i for i, (d, t) in enumerate(zip(table.dataset, table.task_id))}
    out = np.full((len(table.task_id), len(table.models)), "", dtype=object)
    done: set[tuple[int, int]] = set()
    for p in paths:
        df = pd.read_csv(p)
        for j, m in enumerate(table.models):
            col = f"{m}|model_response"
            if col not in df:
                continue
            for d, t, r in zip(df["eval_name"], df["sample_id"], df[col]):
                i = row.get((str(d), str(t)))
                if i is not None and (i, j) not in done and isinstance(r, str):
                    out[i, j] = prompt_text(r)
                    done.add((i, j))
    return out


def scorer_oof(Xtask: np.ndarray, Xanswer: dict[int, np.ndarray] | None, S: np.ndarray, fold_of: np.ndarray,
               C: float = 1.0) -> np.ndarray:
    """Out-of-fold P(the model's answer is right) per task and model: logistic regression (``C``) on the task's
    embedding, and with ``Xanswer`` (model -> answer embeddings) also the answer's and their product."""
    from sklearn.linear_model import LogisticRegression

    P = np.zeros(S.shape)
    for j in range(S.shape[1]):
        F = Xtask if Xanswer is None else np.hstack([Xtask, Xanswer[j], Xtask * Xanswer[j]])
        for f in np.unique(fold_of):
            te, tr = fold_of == f, fold_of != f
            y = S[tr, j] >= 0.5
            P[te, j] = (LogisticRegression(C=C, max_iter=2000).fit(F[tr], y).predict_proba(F[te])[:, 1]
                        if 0 < y.mean() < 1 else y.mean())
    return P


def pair_cascades(S: np.ndarray, C: np.ndarray, conf: np.ndarray, fold_of: np.ndarray,
                  n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(points, tasks) success and cost of every call over the threshold sweep of a cascade along every two models
    of each fold's training cost-accuracy chain in cost order, all pooled (the whole chain is
    ``routing_multi.cascade_outcomes``, on the same thresholds)."""
    ts = np.r_[-np.inf, np.unique(np.quantile(conf, np.linspace(0, 1, n))), np.inf]
    chains = [pareto_chain(np.nanmean(C[fold_of != f], 0), np.nanmean(S[fold_of != f], 0)) for f in np.unique(fold_of)]
    size = min(len(c) for c in chains)
    pairs = [(a, b) for a in range(size) for b in range(a + 1, size)]
    Ss, Cs = np.zeros((len(pairs) * len(ts), len(S))), np.zeros((len(pairs) * len(ts), len(S)))
    for f, chain in zip(np.unique(fold_of), chains):
        te = fold_of == f
        for k, (a, b) in enumerate(pairs):
            for i, t in enumerate(ts):
                r = cascade(S[te], C[te], conf[te], [chain[a], chain[b]], t)
                Ss[k * len(ts) + i, te], Cs[k * len(ts) + i, te] = r["success"], r["cost"]
    return Ss, Cs
