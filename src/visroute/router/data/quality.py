"""Router-data quality: what `route build` reports about a routing table before anyone trains on it.

- **Leakage.** A validation or test row whose task text nearly repeats a training row (cosine similarity of
  MiniLM embeddings >= ``threshold``, default 0.95) and that shows the same image (or neither has one) lets a
  router memorise rather than generalise. Such rows are counted per split, with examples; ``dedup`` removes
  them from validation/test (val/test pairs are reported too, and the later split's copy goes).
- **Label noise.** The same item asked through different prompt variants should mostly get the same outcome
  from the same model. The share of (item, model) pairs whose success differs across variants is an upper
  bound on label noise (it also counts genuine prompt sensitivity); it is reported per model.
- **Balance.** Rows per split and dataset, and each model's mean success per split: a model that succeeds
  almost always or never gives a router little to learn, and a dataset missing from training cannot be
  routed from experience.
"""

from __future__ import annotations

import numpy as np

from visroute.log import get_logger

log = get_logger(__name__)
SPLITS = ("train", "val", "test")


def _near_duplicates(table, emb: np.ndarray, threshold: float, block: int = 256) -> np.ndarray:
    """For each row, the index of an earlier-split row it nearly repeats (train < val < test), else -1."""
    rank = np.array([SPLITS.index(s) if s in SPLITS else 0 for s in table.split])
    match = np.full(len(table), -1, np.int64)
    images = np.asarray(table.image_id).astype(str)
    for later in (1, 2):
        q = np.flatnonzero(rank == later)
        ref = np.flatnonzero(rank < later)
        if not len(q) or not len(ref):
            continue
        R = emb[ref]
        for s in range(0, len(q), block):
            rows = q[s : s + block]
            sims = emb[rows] @ R.T
            same_image = images[rows][:, None] == images[ref][None, :]
            sims = np.where(same_image, sims, -1.0)
            best = sims.argmax(axis=1)
            hit = sims[np.arange(len(rows)), best] >= threshold
            match[rows[hit]] = ref[best[hit]]
    return match


def label_noise(table) -> dict:
    """Share of (item, model) pairs whose success differs across the item's prompt variants."""
    key = np.char.add(np.char.add(table.dataset.astype(str), "\x1f"), table.task_id.astype(str))
    variants = {}
    for k, p in zip(key, table.prompt):
        variants.setdefault(k, set()).add(p)
    multi = np.array([len(variants[k]) > 1 for k in key])
    if not multi.any():
        return {"items_with_variants": 0, "flip_rate": None, "per_model": {}}
    per = {}
    ks = key[multi]
    for j, m in enumerate(table.models):
        s = table.success[multi, j]
        ok = ~np.isnan(s)
        groups: dict[str, list[float]] = {}
        for k, v in zip(ks[ok], s[ok]):
            groups.setdefault(k, []).append(v)
        pairs = [g for g in groups.values() if len(g) > 1]
        per[m] = float(np.mean([np.ptp(g) > 1e-9 for g in pairs])) if pairs else None
    vals = [v for v in per.values() if v is not None]
    return {"items_with_variants": int(len(set(ks))), "flip_rate": float(np.mean(vals)) if vals else None,
            "per_model": per}


def balance(table) -> dict:
    out = {"rows": {s: int((table.split == s).sum()) for s in SPLITS}, "datasets": {}, "models": {}}
    for d in np.unique(table.dataset):
        sel = table.dataset == d
        out["datasets"][str(d)] = {s: int((sel & (table.split == s)).sum()) for s in SPLITS}
    for j, m in enumerate(table.models):
        out["models"][m] = {s: (float(np.nanmean(table.success[table.split == s, j]))
                                if np.isfinite(table.success[table.split == s, j]).any() else None) for s in SPLITS}
    return out


def quality_report(table, threshold: float = 0.95, embedder=None, rule=None) -> tuple[dict, np.ndarray]:
    """The report, and per row the index of the training (or validation) row it nearly repeats (-1: none).
    ``rule`` (a ``TextRule``): texts are compared as the router embeds them, without shared affixes."""
    from visroute.router.data.texts import TextRule, text_report

    rule = rule or TextRule()
    report = {"threshold": threshold, "label_noise": label_noise(table), "balance": balance(table)}
    try:
        if embedder is None:
            from visroute.router.data.embed import TextEmbedder

            embedder = TextEmbedder()
        report["texts"] = text_report(table.text, table.dataset, rule, embedder)
        emb = embedder.embed(rule.apply_all(table.text))
    except Exception as e:  # the embedder is an optional extra: report without leakage rather than fail the build
        log.warning("near-duplicate check skipped: %s", e)
        report.setdefault("texts", text_report(table.text, table.dataset, rule))
        report["near_duplicates"] = {"checked": False, "reason": str(e).splitlines()[0]}
        return report, np.full(len(table), -1, np.int64)
    match = _near_duplicates(table, np.asarray(emb, np.float32), threshold)
    dup = match >= 0
    examples = [{"row": table.text[i][:120], "split": str(table.split[i]), "repeats": table.text[match[i]][:120],
                 "of_split": str(table.split[match[i]])} for i in np.flatnonzero(dup)[:5]]
    report["near_duplicates"] = {"checked": True, "val": int((dup & (table.split == "val")).sum()),
                                 "test": int((dup & (table.split == "test")).sum()), "examples": examples}
    return report, match


def dedup(table, match: np.ndarray):
    """The table without the validation/test rows that nearly repeat an earlier split's row."""
    return table.subset(match < 0)


def format_report(report: dict) -> list[str]:
    """Short lines for the terminal."""
    nd = report.get("near_duplicates", {})
    ln = report["label_noise"]
    lines = [("near-duplicates of earlier splits (cos >= {:.2f}): val {}, test {}".format(
        report["threshold"], nd["val"], nd["test"]) if nd.get("checked") else
        f"near-duplicate check skipped ({nd.get('reason')})")]
    lines.append("label noise (outcome flips across prompt variants): " + (
        f"{ln['flip_rate']:.1%} of item-model pairs over {ln['items_with_variants']} items" if ln["flip_rate"] is not None
        else "no item has several prompt variants"))
    for m, acc in report["balance"]["models"].items():
        lines.append(f"  {m:<28} success " + "  ".join(f"{s} {v:.3f}" if v is not None else f"{s} -"
                                                      for s, v in acc.items()))
    return lines


def checked_table(table, remove_duplicates: bool = False, threshold: float = 0.95, embedder=None, rule=None):
    """`route build`'s check: the quality report, and the table with near-duplicates removed when asked."""
    report, match = quality_report(table, threshold, embedder, rule)
    if remove_duplicates:
        table = dedup(table, match)
        report["dedup_removed"] = int((match >= 0).sum())
    return table, report
