"""LLM-as-router: a chat model reads model cards and the task and names the model to call.

The baseline a learned router has to beat when the question is "why not just ask an LLM?". Each model card
gives the model's name, its price per call and its training accuracy on the task's dataset and overall (from
the routing table's train split). The answer is parsed to a model name (the longest name mentioned first
wins; a bare number, or 'model N', is a 1-based index into the listed cards); an answer naming no model falls back to the
cheapest model and is counted. Answers are cached (``visroute.llm.cache``: a re-run costs nothing to
compute), but the router's own call is still priced for every task, cached or not, since a deployment would
pay for it: tokens times the router model's price (``visroute.tasks.costs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from visroute.errors import VisrouteError

SYSTEM = ("You are a router. You choose which AI model should answer a task: the cheapest model that is likely "
          "to answer it correctly. Reply with the model's name only.")


@dataclass
class ModelCard:
    name: str
    price: float
    accuracy: dict[str, float] = field(default_factory=dict)   # dataset -> training accuracy
    overall: float = float("nan")

    def line(self, index: int, dataset: str) -> str:
        acc = self.accuracy.get(dataset)
        on = f"{acc:.0%} on {dataset} tasks, " if acc is not None and np.isfinite(acc) else ""
        return f"{index}. {self.name}: price {self.price:.3g} per call; accuracy {on}{self.overall:.0%} overall"


def model_cards(table) -> list[ModelCard]:
    """Cards for the table's models from its train split: mean cost per call and accuracy per dataset."""
    train = table.part("train")
    if len(train) == 0:
        raise VisrouteError("the routing table has no training rows to describe the models with")
    costs = train.model_costs()
    cards = []
    for j, m in enumerate(table.models):
        col = train.success[:, j]
        per = {str(d): float(np.nanmean(col[train.dataset == d])) for d in np.unique(train.dataset)
               if np.isfinite(col[train.dataset == d]).any()}
        cards.append(ModelCard(m, float(costs[j]), per, float(np.nanmean(col))))
    return cards


def routing_prompt(cards: list[ModelCard], text: str, dataset: str) -> str:
    lines = "\n".join(c.line(i + 1, dataset) for i, c in enumerate(cards))
    return (f"Models:\n{lines}\n\nTask (from the dataset '{dataset}'):\n{text}\n\n"
            "Which model should answer this task? Answer with the model's name only.")


def parse_choice(answer: str, names: list[str]) -> int | None:
    """Index of the model the answer names (None if none): the earliest mention, longer names first so that
    'gpt-4-turbo' is not read as 'gpt-4'; a bare number or 'model N' is a 1-based index."""
    text = answer.strip().lower()
    hits = []
    masked = text
    for j in sorted(range(len(names)), key=lambda j: -len(names[j])):
        pattern = re.compile(r"(?<![a-z0-9])" + re.escape(names[j].lower()) + r"(?![a-z0-9])")
        found = pattern.search(masked)
        if found:
            hits.append((found.start(), j))
            masked = pattern.sub(lambda mt: " " * len(mt.group(0)), masked)
    if hits:
        return min(hits)[1]
    m = re.fullmatch(r"\W*(?:model\s*)?#?\s*(\d+)\W*", text)
    if m and 1 <= int(m.group(1)) <= len(names):
        return int(m.group(1)) - 1
    return None


class LLMRouter:
    """Route with a chat model (any visroute generator: ``openai-compatible:URL#model``, ``hf:DIR``, ...)."""

    def __init__(self, generator, cards: list[ModelCard], price=None):
        self.generator, self.cards, self.price = generator, cards, price

    @classmethod
    def from_spec(cls, spec: str, cards: list[ModelCard], prices_path=None, cache_path=None, **kw) -> "LLMRouter":
        from visroute.llm.cache import ResponseCache
        from visroute.llm.client import load_generator
        from visroute.tasks.costs import PriceTable

        gen = load_generator(spec, cache=ResponseCache(cache_path), max_tokens=kw.pop("max_tokens", 16),
                             temperature=0.0, **kw)
        return cls(gen, cards, PriceTable.load(prices_path).price(gen.spec))

    def route(self, texts, datasets) -> dict:
        """Picks (indices into the cards), each task's router-call cost, and counts of cached/failed/unparsed."""
        from visroute.llm.base import ChatRequest

        names = [c.name for c in self.cards]
        cheapest = int(np.argmin([c.price for c in self.cards]))
        reqs = [ChatRequest(routing_prompt(self.cards, t, str(d)), system=SYSTEM) for t, d in zip(texts, datasets)]
        results = self.generator.generate(reqs)
        n_failed = sum(not r.ok for r in results)
        if results and n_failed == len(results):  # no routing was measured: no accuracy to report
            from visroute.errors import CallsFailed

            first = next(r.error for r in results if not r.ok)
            raise CallsFailed(f"LLM router {getattr(self.generator, 'spec', 'model')}: all {n_failed} call(s) failed "
                              f"({' '.join(str(first).split())[:160]}); {CallsFailed.marker}")
        picks, call_cost, unparsed = [], [], 0
        for r in results:
            j = parse_choice(r.text, names) if r.ok else None
            unparsed += j is None
            picks.append(cheapest if j is None else j)
            cost = self.price.cost(r.input_tokens, r.output_tokens, 0, r.latency_s) if self.price else 0.0
            call_cost.append(cost)
        return {"picks": np.asarray(picks, np.int64), "router_cost": np.asarray(call_cost, np.float64),
                "answers": [r.text for r in results], "unparsed": unparsed,
                "cached": sum(r.cached for r in results), "failed": sum(not r.ok for r in results)}
