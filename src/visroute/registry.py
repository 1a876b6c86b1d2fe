"""One table per kind of thing (heads, model backends, generator backends, router kinds).

Each kind keeps its table next to the code it describes (``visroute.pipeline.heads.HEADS``,
``visroute.models.backends.BACKENDS``, ``visroute.llm.client.GENERATORS``,
``visroute.router.learn.kinds.ROUTER_KINDS``); an entry says everything about its thing, so adding one
is one module plus one ``register`` call, and nothing else in the house names the kinds.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from visroute.errors import VisrouteError

T = TypeVar("T")


def nearest_key(key: str, valid) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, else an empty string."""
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Name -> entry for one kind. Lookup of an unknown name raises ``error`` naming the nearest one."""

    def __init__(self, kind: str, plural: str | None = None, error: type[Exception] = VisrouteError):
        self.kind, self.plural, self.error = kind, plural or f"{kind}s", error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} '{name}'{nearest_key(name, self._entries)} "
                             f"({self.plural}: {', '.join(self._entries)})") from None

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._entries.get(name, default) if isinstance(name, str) else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, **where) -> tuple[str, ...]:
        """Registered names, optionally those whose entry has every given attribute value."""
        return tuple(n for n, e in self._entries.items() if all(getattr(e, k) == v for k, v in where.items()))

    def items(self):
        return list(self._entries.items())
