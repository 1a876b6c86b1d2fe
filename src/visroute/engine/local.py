"""The local engine: everything in this process (DataLoader workers decode), exactly as visroute runs without Ray.

Its images are ``visroute.features.encode.LocalEncoder``'s, the encoder the feature layer uses when no engine is
handed down to it: one local road, whether a caller names the engine or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from visroute.engine.options import EngineOptions
from visroute.features.encode import LocalEncoder


class LocalEngine(LocalEncoder):
    name = "local"

    def __init__(self, options: EngineOptions | None = None):
        self.options = options or EngineOptions()

    def feature_cache(self, root=None):
        from visroute.features.cache import FeatureCache

        return FeatureCache(root, engine=self)

    def map_calls(self, fn: Callable[[Any, int], Any], items: Iterable[Any],
                  endpoints: Callable[[Any], tuple[str, ...]] = lambda item: ()) -> "LocalCalls":
        """``fn(item, concurrency)`` for every item, one after the other when iterated."""
        return LocalCalls(fn, list(items), self.options.concurrency)

    def generator(self, llm: str, spec, runtime):
        """The describe generator, built here by the pipeline factory's loader."""
        from visroute.pipeline.build import load_generative

        return load_generative(llm, spec, runtime)

    def run_cells(self, jobs, run_contrastive, run_task, runtime):
        """Cells one after the other, in grid order; task cells share the caller's ``runtime`` (its loaded models)."""
        for job in jobs:
            yield job, (run_contrastive(job) if job.contrastive else run_task(job, runtime))

    def shutdown(self) -> None:
        pass


class LocalCalls:
    """Calls run one by one when iterated; ``finished()`` has nothing to offer before that."""

    def __init__(self, fn, items, concurrency: int):
        self.fn, self.items, self.concurrency = fn, items, concurrency

    def finished(self) -> Iterator[tuple[Any, Any]]:
        return iter(())

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for item in self.items:
            yield item, self.fn(item, self.concurrency)
