"""What each prediction cost: tokens, images and seconds priced by a per-model table.

Price table (JSON): ``{"<model spec or fnmatch pattern>": {"input_per_mtok": 0.15, "output_per_mtok": 0.6,
"per_image": 0.0, "per_second": 0.0}}``. Local models are priced by measured seconds times ``per_second``
(e.g. a GPU-hour price / 3600); the first matching entry wins, ``"*"`` is the fallback. Cached responses
cost nothing. The unit is whatever currency the table uses (the shipped default: US dollars).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from visroute.errors import VisrouteError

#: Shipped default: local models at an illustrative GPU price of $2.00/hour; HTTP endpoints free unless priced.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "openai-compatible:*api.openai.com*#gpt-4o-mini*": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
    "openai-compatible:*api.openai.com*#gpt-4o*": {"input_per_mtok": 2.50, "output_per_mtok": 10.0},
    "*": {"per_second": 2.00 / 3600},
}


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_image: float = 0.0
    per_second: float = 0.0

    def cost(self, input_tokens: int | None, output_tokens: int | None, images: int, seconds: float) -> float:
        return ((input_tokens or 0) * self.input_per_mtok / 1e6 + (output_tokens or 0) * self.output_per_mtok / 1e6
                + images * self.per_image + seconds * self.per_second)


class PriceTable:
    def __init__(self, table: dict[str, dict[str, float]] | None = None):
        self.table = dict(table if table is not None else DEFAULT_PRICES)
        for k, v in self.table.items():
            unknown = set(v) - set(Price.__dataclass_fields__)
            if unknown:
                raise VisrouteError(f"price entry {k!r} has unknown field(s) {sorted(unknown)}")

    @classmethod
    def load(cls, path: str | Path | None) -> "PriceTable":
        if path is None:
            return cls()
        try:
            return cls(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise VisrouteError(f"cannot read price table {path}: {e}") from None

    def price(self, spec: str) -> Price:
        for pattern, fields in self.table.items():
            if pattern == spec or fnmatch.fnmatchcase(spec, pattern):
                return Price(**fields)
        return Price()
