"""Agreement across prompt variants (self-consistency) as a cascade stage's confidence.

A grid may measure a model under several question prompts (``prompts: [mcq, mcq-text]``). A cascade whose
confidence is ``"variants"`` calls such an earlier stage once per measured prompt variant, keeps the answer most
variants give (ties: the earliest variant in sorted order) and stops when the share of the variants giving it
reaches the threshold. Its cost is every variant's call. The last stage answers once, with its route-time variant;
a stage measured with one prompt, or prompt-agnostic ("*"), keeps its own score or the router's predicted success.

An unparsable answer is a variant that does not agree with any other, so it lowers the share. Over a routing
table (``table_consensus``) the vote is taken per (dataset, task id) across the variant rows with the same rule as
at route time (``variant_vote``), so training, evaluation and ``visroute route`` score and run the same cascade.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np


@dataclass
class Consensus:
    """Per table row and model, the prompt-variant vote of that row's task (NaN where the model has one variant)."""

    share: np.ndarray    # (R, M) share of the variants giving the kept answer
    success: np.ndarray  # (R, M) the kept answer's success
    cost: np.ndarray     # (R, M) the summed cost of every variant's call
    calls: np.ndarray    # (R, M) how many variants were called

    def subset(self, mask: np.ndarray) -> "Consensus":
        return Consensus(self.share[mask], self.success[mask], self.cost[mask], self.calls[mask])

    def stages(self, chain: list[int]) -> list[int]:
        """The earlier stages of ``chain`` (all but the last) that have a vote on some row."""
        return [j for j in chain[:-1] if np.isfinite(self.share[:, j]).any()]


def variant_vote(keys: list) -> tuple[int, float]:
    """(position of the kept answer, share of all variants giving it) for one task's answers in variant order;
    None is an unparsable answer. Without any answer: the first variant, share 0."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0, 0.0
    top = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == top), top / len(keys)


def varied_models(models: list[str], pipelines: dict) -> np.ndarray:
    """Whether each model was measured under two or more prompt variants (``pipelines``: model -> variant -> spec)."""
    return np.array([bool(model_variants(pipelines, m)) for m in models], bool)


def model_variants(pipelines: dict, model: str) -> list[str]:
    """A model's measured prompt variants in the order votes break ties (sorted); [] for one or none."""
    vs = sorted(v for v in (pipelines.get(model) or {}) if v != "*")
    return vs if len(vs) >= 2 else []


def consensus_arrays(group: np.ndarray, prompt: np.ndarray, answers: np.ndarray, success: np.ndarray,
                     cost: np.ndarray, varied: np.ndarray) -> Consensus:
    """The vote of every task (rows sharing a ``group`` code) for every ``varied`` model, spread back to its rows:
    ``variant_vote`` over the rows where the model ran (finite success), in ``prompt`` order."""
    R, M = success.shape
    share, succ, spent = (np.full((R, M), np.nan) for _ in range(3))
    calls = np.zeros((R, M), np.int64)
    if not R:
        return Consensus(share, succ, spent, calls)
    group = np.asarray(group, np.int64)
    G = int(group.max()) + 1
    rank = np.unique(np.asarray(prompt).astype(str), return_inverse=True)[1].reshape(-1)
    for j in np.flatnonzero(varied):
        ran = np.isfinite(success[:, j])
        n_ran = np.bincount(group[ran], minlength=G)
        g_cost = np.bincount(group[ran], weights=np.nan_to_num(cost[ran, j]), minlength=G)
        key = np.asarray(answers[:, j], dtype=object)
        rows = np.flatnonzero(ran & (key != ""))
        top = np.zeros(G)
        pick = _earliest(np.flatnonzero(ran), group, rank, G)  # no answer at all: the first variant, share 0
        if len(rows):
            codes = np.unique(key[rows].astype(str), return_inverse=True)[1].reshape(-1)
            _, inv, cnt = np.unique(group[rows] * (int(codes.max()) + 1) + codes, return_inverse=True,
                                    return_counts=True)
            count = cnt[inv.reshape(-1)]
            np.maximum.at(top, group[rows], count)
            voted = _earliest(rows[count == top[group[rows]]], group, rank, G)
            pick = np.where(voted >= 0, voted, pick)
        g = group[ran]
        with np.errstate(invalid="ignore", divide="ignore"):
            share[ran, j] = (top / np.maximum(n_ran, 1))[g]
        succ[ran, j] = np.nan_to_num(success[pick[g], j])
        spent[ran, j] = g_cost[g]
        calls[ran, j] = n_ran[g]
    return Consensus(share, succ, spent, calls)


def _earliest(rows: np.ndarray, group: np.ndarray, rank: np.ndarray, G: int) -> np.ndarray:
    """Per group, the row of ``rows`` with the earliest prompt variant (-1 where the group has none)."""
    out = np.full(G, -1, np.int64)
    if len(rows):
        o = rows[np.lexsort((rank[rows], group[rows]))]
        first = np.r_[True, group[o][1:] != group[o][:-1]]
        out[group[o][first]] = o[first]
    return out


def table_consensus(table) -> Consensus | None:
    """The prompt-variant votes of a routing table with one row per (dataset, variant, task) and models measured
    under several variants (its ``meta["pipelines"]``); None when no model has variants to vote with."""
    if table.meta.get("granularity", "sample") != "sample" or not len(table):
        return None
    varied = varied_models(list(table.models), table.meta.get("pipelines") or {})
    if not varied.any():
        return None
    keys = np.char.add(np.char.add(table.dataset.astype(str), "\x00"), table.task_id.astype(str))
    group = np.unique(keys, return_inverse=True)[1].reshape(-1)
    return consensus_arrays(group, table.prompt, table.answer, table.success, table.cost, varied)


def part_consensus(table, part: str) -> Consensus | None:
    """The votes of one part's rows (``table.part(part)``), taken over each task's variant rows in the whole table:
    a task's variants may fall in different parts."""
    votes = table_consensus(table)
    return votes.subset(table.split == part) if votes is not None else None


def variant_stage_arrays(chain: list[int], conf: np.ndarray, success: np.ndarray, cost: np.ndarray,
                         consensus: Consensus) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(confidence, success, cost, calls) a ``"variants"`` cascade along ``chain`` is scored on: its earlier stages
    with a vote take the vote's share, kept answer, summed cost and number of variant calls; every other stage, and
    rows without a vote, keep ``conf`` (own score or predicted success) and the row's own single call."""
    conf, success, cost = (np.array(a, np.float64, copy=True) for a in (conf, success, cost))
    calls = np.ones(success.shape)
    for j in consensus.stages(chain):
        has = np.isfinite(consensus.share[:, j])
        conf[has, j], success[has, j], cost[has, j], calls[has, j] = (
            consensus.share[has, j], consensus.success[has, j], consensus.cost[has, j], consensus.calls[has, j])
    return conf, success, cost, calls
