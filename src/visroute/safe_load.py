"""The one loader for every YAML and JSON file (or body) visroute reads.

``json``/``yaml.safe_load`` run no code, but they still let a small file cost a lot: a YAML alias bomb expands a
few lines into billions of nodes, and deep nesting makes the parsers (and every walk over the result) recurse
until Python's stack gives out. Here:

- size is capped (``max_bytes``) before parsing;
- nesting deeper than ``max_depth`` is refused: for JSON, Python's C parser stops a nesting bomb at the
  interpreter's recursion limit (a bounded cost), and the parsed value's depth is checked by an iterative walk;
  for YAML, while composing;
- YAML aliases (``*name``) are refused, so no expansion happens at all; anchors alone are harmless;
- every failure is one line: ``SafeLoadError`` (a ``VisrouteError``) naming the file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visroute.errors import VisrouteError

MAX_BYTES = 64 * 2**20
MAX_DEPTH = 64


class SafeLoadError(VisrouteError, ValueError):
    """A YAML/JSON text is not valid, too large, too deeply nested, or uses YAML aliases."""


def _bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)


def value_depth(value: Any) -> int:
    """Deepest nesting of lists and dicts in a parsed value: an iterative walk over the containers only (a long
    string costs nothing, unlike a scan of the text)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, depth)
        todo.extend((x, depth + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def _bounded_bytes(data: str | bytes, where: str, max_bytes: int) -> bytes:
    raw = _bytes(data)
    if len(raw) > max_bytes:
        raise SafeLoadError(f"{where}: {len(raw) / 2**20:.1f} MiB is over the {max_bytes / 2**20:g} MiB limit")
    return raw


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SafeLoadError(f"{where} is not UTF-8 text (undecodable byte at offset {e.start})") from None

def parse_json(data: str | bytes, where: str = "JSON", max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    """``json.loads`` with a size and depth limit; errors are one ``SafeLoadError`` line naming ``where``."""
    raw = _bounded_bytes(data, where, max_bytes)
    text = _utf8(raw, where)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SafeLoadError(f"{where} is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:  # the C parser stops a nesting bomb at the interpreter's recursion limit
        raise SafeLoadError(f"{where}: nested deeper than {max_depth} levels") from None
    except ValueError as e:
        raise SafeLoadError(f"{where} is not valid JSON: {' '.join(str(e).split())[:120]}") from None
    if value_depth(value) > max_depth:
        raise SafeLoadError(f"{where}: nested deeper than {max_depth} levels")
    return value


def _loader(max_depth: int):
    import yaml

    class Loader(yaml.SafeLoader):
        """yaml's safe loader without aliases and with a nesting limit."""

        _depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                mark = event.start_mark
                raise SafeLoadError(f"YAML alias *{event.anchor} at line {mark.line + 1} refused (aliases can expand "
                                    "without bound; write the value out)")
            self._depth += 1
            try:
                if self._depth > max_depth:
                    raise SafeLoadError(f"nested deeper than {max_depth} levels")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return Loader


def parse_yaml(data: str | bytes, where: str = "YAML", max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    """``yaml.safe_load`` refusing aliases, deep nesting and large texts; errors are one line naming ``where``."""
    import yaml

    text = _utf8(_bounded_bytes(data, where, max_bytes), where)
    loader = _loader(max_depth)(text)
    try:
        return loader.get_single_data()
    except SafeLoadError as e:
        raise SafeLoadError(f"{where}: {e}") from None
    except yaml.YAMLError as e:  # one line: where, and what the parser expected
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise SafeLoadError(f"{where} is not valid YAML{at}: {what}") from None
    except RecursionError:
        raise SafeLoadError(f"{where}: nested too deeply") from None
    finally:
        loader.dispose()


def _read(path: str | Path, what: str, max_bytes: int) -> bytes:
    p = Path(path)
    try:
        if p.stat().st_size > max_bytes:
            raise SafeLoadError(f"{what} {p}: {p.stat().st_size / 2**20:.1f} MiB is over the "
                                f"{max_bytes / 2**20:g} MiB limit")
        return p.read_bytes()
    except IsADirectoryError:
        raise SafeLoadError(f"{what} {p} is a directory, not a file") from None
    except OSError as e:
        raise SafeLoadError(f"cannot read {what} {p}: {e.strerror or e}") from None


def read_json(path: str | Path, what: str = "JSON file", max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    return parse_json(_read(path, what, max_bytes), f"{what} {path}", max_depth, max_bytes)


def read_yaml(path: str | Path, what: str = "YAML file", max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    return parse_yaml(_read(path, what, max_bytes), f"{what} {path}", max_depth, max_bytes)
