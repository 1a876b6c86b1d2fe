"""Task texts that embed what differs between tasks.

Public routing data often wraps every task of a dataset in the same few-shot prefix or instruction suffix
(RouterBench's ARC-Challenge prompts are ~88% shared prefix). A sentence encoder reads only its first few
hundred tokens, so such texts all embed to one vector and no router can learn from them. ``route build``
finds the longest prefix and suffix every text of a dataset shares (``shared_affixes``), reports them with the
share of texts longer than the embedder's window, and records them as a ``TextRule``; the router's text
features strip them (``TextRule.apply``), in training and at route time alike, because the bundle carries
the rule. What the prefix said is the same for the whole dataset, so nothing a router could use is lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

MIN_AFFIX_CHARS = 24       # shorter shared text (e.g. "Question: ") is left alone
MIN_AFFIX_SHARE = 0.2      # ... and so is a prefix under a fifth of the median text
NEAR_IDENTICAL = 0.98      # cosine similarity above which two texts embed "the same"


def _cut_at_space(s: str) -> str:
    """A shared prefix cut back to a whitespace boundary, so no task loses the start of its first word."""
    if not s or s[-1].isspace():
        return s
    i = max(s.rfind(" "), s.rfind("\n"), s.rfind("\t"))
    return s[: i + 1] if i >= 0 else ""


def shared_affixes(texts, min_chars: int = MIN_AFFIX_CHARS, min_share: float = MIN_AFFIX_SHARE) -> tuple[str, str]:
    """The longest prefix and suffix every one of ``texts`` shares (at word boundaries), each kept only when it
    is at least ``min_chars`` long and ``min_share`` of the median text; ("", "") for fewer than two texts."""
    texts = list(dict.fromkeys(str(t) for t in texts))
    if len(texts) < 2:
        return "", ""
    median = float(np.median([len(t) for t in texts]))
    pre = _cut_at_space(os.path.commonprefix(texts))
    rest = [t[len(pre):] for t in texts]
    suf = _cut_at_space(os.path.commonprefix([t[::-1] for t in rest]))[::-1]
    keep = lambda a: a if len(a) >= min_chars and len(a) >= min_share * median else ""  # noqa: E731
    pre, suf = keep(pre), keep(suf)
    if any(not t[len(pre): len(t) - len(suf)].strip() for t in texts):  # never strip a task down to nothing
        return "", ""
    return pre, suf


@dataclass
class TextRule:
    """Per dataset, the prefix/suffix its texts share; ``apply`` removes any of them a text carries."""

    affixes: dict[str, tuple[str, str]] = field(default_factory=dict)

    def apply(self, text: str) -> str:
        for pre, suf in self.affixes.values():
            if pre and text.startswith(pre):
                text = text[len(pre):]
            if suf and text.endswith(suf) and len(text) > len(suf):
                text = text[: len(text) - len(suf)]
        return text

    def apply_all(self, texts) -> list[str]:
        return [self.apply(str(t)) for t in texts] if self.affixes else [str(t) for t in texts]

    def to_dict(self) -> dict:
        return {d: {"prefix": p, "suffix": s} for d, (p, s) in self.affixes.items()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "TextRule":
        if not isinstance(d, dict):
            return cls()
        return cls({str(k): (str(v.get("prefix") or ""), str(v.get("suffix") or ""))
                    for k, v in d.items() if isinstance(v, dict)})


def detect_rule(texts, datasets) -> TextRule:
    """The rule for a table: each dataset's shared affixes (datasets sharing none are left out)."""
    texts, datasets = np.asarray(texts, dtype=object), np.asarray(datasets).astype(str)
    out = {}
    for d in sorted(set(datasets)):
        pre, suf = shared_affixes(texts[datasets == d])
        if pre or suf:
            out[d] = (pre, suf)
    return TextRule(out)


def window_share(texts, tokenizer, window: int, sample: int = 500, seed: int = 0) -> float:
    """Share of (a sample of) texts longer than ``window`` tokens: what the embedder never reads."""
    texts = list(dict.fromkeys(texts))
    if not texts:
        return 0.0
    rng = np.random.default_rng(seed)
    pick = [texts[i] for i in rng.choice(len(texts), min(sample, len(texts)), replace=False)]
    lengths = [len(ids) for ids in tokenizer(pick, add_special_tokens=True, truncation=False)["input_ids"]]
    return float(np.mean(np.asarray(lengths) > window))


def near_identical_share(emb: np.ndarray, threshold: float = NEAR_IDENTICAL, sample: int = 300, seed: int = 0) -> float:
    """Share of (sampled) pairs of distinct rows whose embeddings are near-identical (cosine >= threshold)."""
    emb = np.asarray(emb, np.float32)
    if len(emb) < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    e = emb[rng.choice(len(emb), min(sample, len(emb)), replace=False)]
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    iu = np.triu_indices(len(e), 1)
    return float(np.mean(sims[iu] >= threshold))


def text_report(texts, datasets, rule: TextRule, embedder=None) -> dict:
    """Per dataset: the shared prefix/suffix found (lengths and a preview), the share of texts beyond the
    embedder's window before and after stripping, and the share of row pairs embedding near-identically."""
    texts, datasets = np.asarray(texts, dtype=object), np.asarray(datasets).astype(str)
    out = {}
    tok, window = None, None
    if embedder is not None:
        try:
            model = embedder.model
            tok, window = model.tokenizer, int(model.max_seq_length)
        except Exception:  # the embedder is an optional extra: report the affixes without token counts
            tok = None
    for d in sorted(set(datasets)):
        raw = [str(t) for t in texts[datasets == d]]
        pre, suf = rule.affixes.get(d, ("", ""))
        stripped = rule.apply_all(raw)
        med = float(np.median([len(t) for t in raw])) if raw else 0.0
        r = {"rows": len(raw), "prefix_chars": len(pre), "suffix_chars": len(suf),
             "shared_share": (len(pre) + len(suf)) / med if med else 0.0,
             "prefix_preview": pre[:80], "suffix_preview": suf[-80:]}
        if tok is not None:
            r["window_tokens"] = window
            r["beyond_window_raw"] = window_share(raw, tok, window)
            r["beyond_window_embedded"] = window_share(stripped, tok, window)
            uniq = list(dict.fromkeys(stripped))[:300]
            r["near_identical_pairs"] = near_identical_share(embedder.embed(uniq))
            if pre or suf:  # what the rows would have embedded to, kept whole
                r["near_identical_pairs_raw"] = near_identical_share(embedder.embed(list(dict.fromkeys(raw))[:300]))
        out[d] = r
    return out


def format_text_report(rep: dict) -> list[str]:
    lines = []
    for d, r in rep.items():
        if r["prefix_chars"] or r["suffix_chars"]:
            lines.append(f"{d}: {r['shared_share']:.0%} of a median text is shared by all {r['rows']} rows "
                         f"(prefix {r['prefix_chars']} chars, suffix {r['suffix_chars']}); the router embeds the rest")
        if r.get("beyond_window_raw"):
            lines.append(f"{d}: {r['beyond_window_raw']:.0%} of texts exceed the embedder's {r['window_tokens']}-token "
                         f"window ({r['beyond_window_embedded']:.0%} after removing the shared text)")
        if r.get("near_identical_pairs_raw", 0.0) > 0.5:
            lines.append(f"{d}: kept whole, {r['near_identical_pairs_raw']:.0%} of row pairs would embed to "
                         f"near-identical vectors; without the shared text, {r['near_identical_pairs']:.0%} do")
        if r.get("near_identical_pairs", 0.0) > 0.5:
            lines.append(f"warning: {d}: {r['near_identical_pairs']:.0%} of row pairs embed to near-identical vectors "
                         "(cosine >= 0.98); a router cannot tell these tasks apart")
    return lines
