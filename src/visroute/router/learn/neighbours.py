"""Exact k nearest neighbours by dot product, fast for one query (a routing decision).

A full pass over the training matrix is memory-bound (14,000 x 384 float32 is 21 MB per query). The index keeps
a rank-r projection of the rows (r = 64: 3.6 MB) and each row's distance from that subspace. For a query x
and a row t, ``x.t = (Vx).(Vt) + x_perp.t_perp`` and ``|x_perp.t_perp| <= |x_perp| |t_perp|`` (Cauchy-Schwarz),
so the projection gives every row's score to within a known bound. Only rows whose upper bound reaches the
k-th best lower bound can be among the k nearest; they alone are scored in full. The answer is the exact
top k of the full scores (ties broken towards the lower row index). Task-text embeddings are close to
low-rank, so few rows survive; when many would, the index scores all rows instead.
"""

from __future__ import annotations

import numpy as np

#: slack added to every bound: covers float32 rounding of the projected and the full scores
_EPS = 1e-4


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Indices (into ``ids`` if given) of the k largest scores; ties at the boundary go to the lower index."""
    n = len(scores)
    ids = np.arange(n) if ids is None else ids
    if k >= n:
        return ids[np.lexsort((ids, -scores))]
    kth = np.partition(scores, n - k)[n - k]
    above = ids[scores > kth]
    tied = np.sort(ids[scores == kth])[: k - len(above)]
    return np.concatenate([above, tied])


def build_index(X: np.ndarray, rank: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(basis (d, r), projected rows (n, r), each row's distance from the subspace (n,)) for ``query``; r = 0
    (nothing to prune with) when there are too few rows or dimensions for the projection to pay."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, d = X.shape
    if n < 16 * rank or d <= 2 * rank:
        return np.zeros((d, 0), np.float32), np.zeros((n, 0), np.float32), np.zeros(n, np.float64)
    gram = np.zeros((d, d))
    for s in range(0, n, 65536):
        block = X[s : s + 65536].astype(np.float64)
        gram += block.T @ block
    V = np.linalg.eigh(gram)[1][:, -rank:]  # the rank-r subspace holding most of the rows' energy
    resid = np.empty(n, np.float64)
    for s in range(0, n, 65536):
        block = X[s : s + 65536].astype(np.float64)
        resid[s : s + 65536] = np.linalg.norm(block - (block @ V) @ V.T, axis=1)
    V32 = np.ascontiguousarray(V, dtype=np.float32)
    return V32, np.ascontiguousarray(X @ V32), resid


def query(X: np.ndarray, basis: np.ndarray | None, proj: np.ndarray | None, resid: np.ndarray | None, x: np.ndarray,
          k: int) -> np.ndarray:
    """Row indices of the k largest ``X @ x`` (exactly; ties to the lower index), pruned through ``build_index``."""
    n = len(X)
    k = min(k, n)
    if basis is None or proj is None or resid is None or basis.shape[1] == 0 or k <= 0 or len(proj) != n:
        return top_k(X @ x, k)
    xp = x @ basis
    x_perp = float(np.linalg.norm(x.astype(np.float64) - basis.astype(np.float64) @ xp.astype(np.float64)))
    approx = proj @ xp
    slack = x_perp * resid + _EPS
    floor = np.partition(approx - slack, n - k)[n - k]
    cand = np.flatnonzero(approx + slack >= floor)
    if len(cand) > n // 4:  # the bound prunes little here: one full pass is cheaper
        return top_k(X @ x, k)
    return top_k(X[cand] @ x, k, cand)
