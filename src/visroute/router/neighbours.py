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


class DotIndex:
    """Rows of ``X`` (n, d) float32; ``query(x, k)`` -> the k rows with the largest ``X @ x``, exactly."""

    def __init__(self, X: np.ndarray, rank: int = 64):
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        n, d = self.X.shape
        self.V = None
        if n >= 16 * rank and d > 2 * rank:
            gram = np.zeros((d, d))
            for s in range(0, n, 65536):
                block = self.X[s : s + 65536].astype(np.float64)
                gram += block.T @ block
            _, vecs = np.linalg.eigh(gram)
            V = vecs[:, -rank:]  # the rank-r subspace holding most of the rows' energy
            self.V = np.ascontiguousarray(V, dtype=np.float32)
            self.P = np.ascontiguousarray(self.X @ self.V)
            self.resid = np.empty(n, np.float64)
            for s in range(0, n, 65536):
                block = self.X[s : s + 65536].astype(np.float64)
                self.resid[s : s + 65536] = np.linalg.norm(block - (block @ V) @ V.T, axis=1)

    def query(self, x: np.ndarray, k: int) -> np.ndarray:
        """Row indices of the k largest dot products with ``x`` (d,), best first not guaranteed."""
        n = len(self.X)
        k = min(k, n)
        if self.V is None or k <= 0:
            return top_k(self.X @ x, k)
        x64 = x.astype(np.float64)
        xp = x @ self.V
        x_perp = float(np.linalg.norm(x64 - self.V.astype(np.float64) @ xp.astype(np.float64)))
        approx = self.P @ xp
        slack = x_perp * self.resid + _EPS
        lower = approx - slack
        floor = np.partition(lower, n - k)[n - k]
        cand = np.flatnonzero(approx + slack >= floor)
        if len(cand) > n // 4:  # the bound prunes little here: one full pass is cheaper
            return top_k(self.X @ x, k)
        return top_k(self.X[cand] @ x, k, cand)
