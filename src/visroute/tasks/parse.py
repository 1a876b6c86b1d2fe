"""Turning a free-text model answer into one of the response options — or into "unparsable".

Rules: a committed option letter ("B", "(b) ...", "b) ...", "B. ...", "Answer: B", "option b"); the exact
option text; an option number ("2"); an option named in the answer ("The answer is cat."; the longest of
nested matches); the closest option by string similarity above a threshold. A letter that contradicts
the option text next to it ("(a) a cat" where (a) is "dog") is a conflict, two named options are
ambiguous, refusals ("none of these") and empty answers are unparsable: none of them is guessed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_REFUSALS = ("none of these", "none of the above", "none of the options", "i don't know", "i do not know",
             "cannot determine", "can't determine", "not sure", "unable to")


def normalise(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"[^a-z0-9\s]", " ", text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _contained(ans_norm: str, opts_norm: list[str]) -> list[int]:
    """Options whose normalised text appears in the answer; among nested ones only the longest counts."""
    hits = [i for i, o in enumerate(opts_norm) if o and re.search(rf"\b{re.escape(o)}\b", ans_norm)]
    return [i for i in hits if not any(j != i and opts_norm[i] in opts_norm[j] and len(opts_norm[j]) > len(opts_norm[i])
                                       for j in hits)]


def _strong_letter(text: str, n: int) -> tuple[int, str] | None:
    """(letter index, the text after the marker) for answers that commit to a letter."""
    up, low = LETTERS[:n], LETTERS[:n].lower()
    for pat, flags in (
        (rf"^\s*\(?([{up}{low}])\)?[.:)]?\s*$", 0),                         # "B", "(b)", "B."
        (rf"^\s*\(([{up}{low}])\)\s*(.*)$", 0),                             # "(b) a cat"
        (rf"^\s*([{up}{low}])[.:)]\s+(.*)$", 0),                            # "B. cat", "b) cat"
        (rf"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([{up}{low}])\)?(?![A-Za-z])\W*(.*)$", re.IGNORECASE),
    ):
        m = re.search(pat, text, flags)
        if m:
            rest = m.group(2) if m.lastindex and m.lastindex >= 2 else ""
            return LETTERS.index(m.group(1).upper()), rest
    return None


def parse_option(answer: str, options: Sequence[str], lettered: bool = True, fuzzy_threshold: float = 0.8
                 ) -> tuple[int | None, str]:
    """(option index or None, the rule that decided: letter|exact|index|contains|fuzzy — or why not:
    empty|refusal|conflict|ambiguous|unparsable)."""
    text = (answer or "").strip()
    if not text:
        return None, "empty"
    opts_norm = [normalise(o) for o in options]
    n = len(options)
    ans_norm = normalise(text)
    if lettered:
        strong = _strong_letter(text, n)
        if strong is not None:
            letter, rest = strong
            named = _contained(normalise(rest), opts_norm) if rest else []
            if named and letter not in named:
                return None, "conflict"
            return letter, "letter"
    if ans_norm in opts_norm and opts_norm.count(ans_norm) == 1:
        return opts_norm.index(ans_norm), "exact"
    if any(r in text.lower() for r in _REFUSALS):
        return None, "refusal"
    hits = _contained(ans_norm, opts_norm)
    if lettered:
        m = re.match(rf"^\s*([{LETTERS[:n]}])\s", text)  # "B cat": a capital letter used as a label
        if m and not hits:
            return LETTERS.index(m.group(1)), "letter"
    m = re.fullmatch(r"\s*\(?(\d{1,3})\)?[.:)]?\s*", text)
    if m and 1 <= int(m.group(1)) <= n:
        return int(m.group(1)) - 1, "index"
    if hits:
        return (hits[0], "contains") if len(hits) == 1 else (None, "ambiguous")
    ratios = [difflib.SequenceMatcher(None, ans_norm, o).ratio() for o in opts_norm]
    order = sorted(range(n), key=ratios.__getitem__, reverse=True)
    if ratios and ratios[order[0]] >= fuzzy_threshold and (n == 1 or ratios[order[1]] < ratios[order[0]]):
        return order[0], "fuzzy"
    return None, "unparsable"
