"""What each prediction cost: tokens, images and seconds priced by a per-model table.

Price table (JSON): ``{"<model spec or fnmatch pattern>": {"input_per_mtok": 0.15, "output_per_mtok": 0.6,
"per_image": 0.0, "per_second": 0.0}}``. Local models are priced by measured seconds times ``per_second``
(e.g. a GPU-hour price / 3600); the most specific matching entry wins (the exact spec, then the pattern with
the most literal characters, ``"*"`` last), so a table means the same whatever its key order (pipeline specs
store it with sorted keys). Cached responses and failed calls cost nothing.
The unit is whatever currency the table uses (the shipped default: US dollars).

A model with no price is "unknown": its cost is NaN, with one warning per model, never an invented rate.
In the shipped table the ``"*"`` fallback (a GPU price) covers local models only; an HTTP endpoint
(``openai-compatible:...``) is priced only by an entry that names it, or by a ``"*"`` in the user's own table.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from visroute.errors import VisrouteError

log = logging.getLogger(__name__)

#: Shipped default: local models at an illustrative GPU price of $2.00/hour; endpoints only where the price is known.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "openai-compatible:*api.openai.com*#gpt-4o-mini*": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
    "openai-compatible:*api.openai.com*#gpt-4o*": {"input_per_mtok": 2.50, "output_per_mtok": 10.0},
    "*": {"per_second": 2.00 / 3600},
}

_NAN = float("nan")
_warned: set[str] = set()


def is_endpoint(spec: str) -> bool:
    """A model reached over HTTP (billed by its provider), as opposed to one run on our own hardware."""
    return spec.startswith("openai-compatible:") or "://" in spec


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_image: float = 0.0
    per_second: float = 0.0

    @classmethod
    def unknown(cls) -> "Price":
        return cls(_NAN, _NAN, _NAN, _NAN)

    @property
    def known(self) -> bool:
        return not any(math.isnan(v) for v in (self.input_per_mtok, self.output_per_mtok, self.per_image, self.per_second))

    def cost(self, input_tokens: int | None, output_tokens: int | None, images: int, seconds: float) -> float:
        if not self.known:
            return _NAN
        return ((input_tokens or 0) * self.input_per_mtok / 1e6 + (output_tokens or 0) * self.output_per_mtok / 1e6
                + images * self.per_image + seconds * self.per_second)


def _check_entry(pattern: object, fields: object, source: str) -> None:
    if not isinstance(pattern, str):
        raise VisrouteError(f"{source}: price keys must be model specs or patterns, found {pattern!r}")
    if not isinstance(fields, dict):
        raise VisrouteError(f"{source}: price entry {pattern!r} must be an object such as "
                            f'{{"input_per_mtok": 0.15}}, found {type(fields).__name__}')
    unknown = set(fields) - set(Price.__dataclass_fields__)
    if unknown:
        raise VisrouteError(f"{source}: price entry {pattern!r} has unknown field(s) {sorted(unknown)} "
                            f"(expected {', '.join(Price.__dataclass_fields__)})")
    for k, v in fields.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise VisrouteError(f"{source}: price entry {pattern!r} field '{k}' must be a non-negative number, "
                                f"found {v!r}")


class PriceTable:
    def __init__(self, table: dict[str, dict[str, float]] | None = None, source: str = "price table"):
        if table is not None and not isinstance(table, dict):
            raise VisrouteError(f"{source}: expected a JSON object mapping model patterns to prices")
        self.shipped = table is None
        self.table = dict(table if table is not None else DEFAULT_PRICES)
        for k, v in self.table.items():
            _check_entry(k, v, source)

    @classmethod
    def load(cls, path: str | Path | None) -> "PriceTable":
        if path is None:
            return cls()
        from visroute.safe_load import read_json

        data = read_json(path, "price table")
        if not isinstance(data, dict):
            raise VisrouteError(f"{path}: expected a JSON object mapping model patterns to prices, "
                                f"found {type(data).__name__}")
        return cls(data, source=str(path))

    def price(self, spec: str) -> Price:
        """The most specific matching entry's price; ``Price.unknown()`` (NaN costs, one warning) when none applies."""
        matches = []
        for pattern, fields in self.table.items():
            if pattern == "*" and self.shipped and is_endpoint(spec):
                continue  # the shipped GPU-hour fallback says nothing about what an endpoint bills
            if pattern == spec or fnmatch.fnmatchcase(spec, pattern):
                literal = len(pattern) - sum(pattern.count(c) for c in "*?[]")
                matches.append((pattern == spec, literal, pattern, fields))
        if matches:
            return Price(**max(matches, key=lambda m: (m[0], m[1], m[2]))[3])
        if spec not in _warned:
            _warned.add(spec)
            log.warning("no price known for %s: its cost is reported as unknown (NaN); "
                        "give a price table (--prices FILE, or prices: in a grid) to count it", spec)
        return Price.unknown()
