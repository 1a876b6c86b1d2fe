"""Description sets: one list of descriptions per class, with provenance.

Formats read (auto-detected):

- DCLIP / WaffleCLIP descriptors ``{classname: [phrase, ...]}`` (phrases such as "has a red crest"),
- CuPL prompts ``{classname: [sentence, ...]}`` (whole sentences, fed to the text encoder as they are),
- DisCLIP ``{"index_to_descriptions": {"0": [...]}, "index_to_classname": {"0": name}, ...}``,
- visroute's own ``{"format": "visroute-descriptions", "kind": ..., "classes": [{"name": ..., "descriptions": [...]}],
  "provenance": {...}}``.

DCLIP and CuPL files have the same shape, so ``kind`` ("descriptor" or "sentence") is given by the caller
or guessed from the text (sentences start with a capital letter and end with a full stop).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path

from visroute.errors import VisrouteError

FORMAT = "visroute-descriptions"


class DescriptionError(VisrouteError):
    """A description file is malformed or does not match the dataset's classes."""


@dataclass
class DescriptionSet:
    classnames: list[str]
    descriptions: list[list[str]]
    kind: str = "descriptor"  # "descriptor" (phrase, combined with the class name) or "sentence" (whole prompt)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.classnames) != len(self.descriptions):
            raise DescriptionError("classnames and descriptions differ in length")
        if self.kind not in ("descriptor", "sentence"):
            raise DescriptionError(f"unknown description kind '{self.kind}' (descriptor or sentence)")

    def __len__(self) -> int:
        return len(self.classnames)

    @property
    def empty_classes(self) -> list[str]:
        return [c for c, d in zip(self.classnames, self.descriptions) if not d]

    def pool(self) -> list[str]:
        """Unique descriptions over all classes, first-seen order."""
        return list(dict.fromkeys(d for ds in self.descriptions for d in ds))

    def with_fallback(self, other: "DescriptionSet") -> "DescriptionSet":
        """Fill classes with no description from ``other`` at the same position (DisCLIP's rule)."""
        if len(other) != len(self):
            raise DescriptionError(f"fallback set has {len(other)} classes, this one {len(self)}")
        filled = [d if d else list(o) for d, o in zip(self.descriptions, other.descriptions)]
        prov = {**self.provenance, "fallback": other.provenance.get("source")}
        return DescriptionSet(list(self.classnames), filled, self.kind, prov)

    def aligned_to(self, classnames: list[str]) -> "DescriptionSet":
        """Reorder to a dataset's class names, matching names loosely (case, '_', '-', spaces).

        Unmatched or missing classes are an error that lists them; positions are used when the file
        has exactly the dataset's number of classes and is in index order (DisCLIP files are).
        """
        key = {}
        for i, c in enumerate(self.classnames):
            key.setdefault(normalise_name(c), i)
        order, missing = [], []
        for c in classnames:
            i = key.get(normalise_name(c))
            if i is None:
                missing.append(c)
            order.append(i)
        if missing:
            if self.provenance.get("indexed") and len(self.classnames) == len(classnames):
                return DescriptionSet(list(classnames), [list(d) for d in self.descriptions], self.kind,
                                      {**self.provenance, "aligned": "by index"})
            used = {i for i in order if i is not None}
            unmatched = [self.classnames[i] for i in range(len(self)) if i not in used]
            raise DescriptionError(
                f"{len(missing)} dataset class(es) have no descriptions: {_preview(missing)}; "
                f"{len(unmatched)} description key(s) match no dataset class: {_preview(unmatched)}"
            )
        return DescriptionSet(list(classnames), [list(self.descriptions[i]) for i in order], self.kind, dict(self.provenance))


def normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def _preview(items: list[str], n: int = 8) -> str:
    return ", ".join(repr(x) for x in items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _guess_kind(descs: list[list[str]]) -> str:
    sample = [d.strip() for ds in descs for d in ds[:3]][:300]
    if not sample:
        return "descriptor"
    sentences = sum(1 for d in sample if d[:1].isupper() and d.rstrip().endswith("."))
    return "sentence" if sentences > 0.6 * len(sample) else "descriptor"


def _check_lists(mapping: dict, path: Path, what: str = "class") -> None:
    for k, v in mapping.items():
        if not isinstance(v, list):
            raise DescriptionError(f"{path}: the value for {what} {k!r} must be a list of strings, "
                                   f"found {type(v).__name__}")
        bad = next((i for i, x in enumerate(v) if not isinstance(x, str)), None)
        if bad is not None:
            raise DescriptionError(f"{path}: the value for {what} {k!r} must be a list of strings, "
                                   f"but item {bad} is {type(v[bad]).__name__}")


def _read_json(path: Path) -> object:
    from visroute.data.images import not_a_regular_file

    why = not_a_regular_file(path)
    if why:
        raise DescriptionError(f"description file '{path}' " + ("does not exist" if why == "no such file" else f"is {why}"))
    from visroute.safe_load import SafeLoadError, read_json

    try:
        return read_json(path, "description file")
    except SafeLoadError as e:
        raise DescriptionError(str(e)) from None
    except OSError as e:
        raise DescriptionError(f"cannot read description file '{path}': {e.strerror or e}") from None


def _visroute_format(data: dict, path: Path, kind: str | None, prov: dict) -> DescriptionSet:
    classes = data.get("classes")
    if not isinstance(classes, list):
        raise DescriptionError(f"{path}: 'classes' must be a list of {{name, descriptions}} objects, "
                               f"found {type(classes).__name__}")
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise DescriptionError(f"{path}: classes[{i}] must be an object with a string 'name' "
                                   "and a list 'descriptions'")
    _check_lists({c["name"]: c.get("descriptions", []) for c in classes}, path)
    provenance = data.get("provenance", {})
    if not isinstance(provenance, dict):
        raise DescriptionError(f"{path}: 'provenance' must be an object, found {type(provenance).__name__}")
    return DescriptionSet([c["name"] for c in classes], [list(c.get("descriptions", [])) for c in classes],
                          kind or data.get("kind", "descriptor"), {**provenance, **prov})


def _disclip_format(data: dict, path: Path, kind: str | None, prov: dict) -> DescriptionSet:
    i2d, i2c = data["index_to_descriptions"], data.get("index_to_classname")
    if not isinstance(i2d, dict) or not isinstance(i2c, dict):
        raise DescriptionError(f"{path}: DisCLIP format needs 'index_to_descriptions' and 'index_to_classname' objects")
    _check_lists(i2d, path, "index")
    bad = next((k for k, v in i2c.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise DescriptionError(f"{path}: index_to_classname[{bad!r}] must be a class name string")
    try:
        idx = sorted(i2c, key=int)
    except ValueError:
        raise DescriptionError(f"{path}: DisCLIP indices (keys of 'index_to_classname') must be integers") from None
    missing = [i for i in idx if i not in i2d]
    if missing:
        raise DescriptionError(f"{path}: no descriptions for index/indices {missing[:10]}")
    return DescriptionSet([i2c[i] for i in idx], [list(i2d[i]) for i in idx], kind or "descriptor",
                          {**prov, "format": "disclip", "indexed": True})


def load_descriptions(path: str | Path, kind: str | None = None, allow_empty: bool = False) -> DescriptionSet:
    """Read any supported description file; malformed files raise DescriptionError naming the problem, and so does
    a file whose every class has no description (it would silently evaluate as plain class names) unless
    ``allow_empty`` (reading a generation report, not evaluating)."""
    dset = _load_descriptions(path, kind)
    if not allow_empty and len(dset) and all(not d for d in dset.descriptions):
        raise DescriptionError(f"{Path(path).expanduser()}: every class's description list is empty; there is "
                               "nothing to evaluate (generate descriptions first, or drop --descriptions)")
    return dset


def _load_descriptions(path: str | Path, kind: str | None = None) -> DescriptionSet:
    path = Path(path).expanduser()
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DescriptionError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if not data:
        raise DescriptionError(f"{path}: the JSON object is empty; expected descriptions per class")
    prov = {"source": str(path)}
    try:
        if data.get("format") == FORMAT:
            return _visroute_format(data, path, kind, prov)
        if "index_to_descriptions" in data:
            return _disclip_format(data, path, kind, prov)
        _check_lists(data, path)
        descs = [list(v) for v in data.values()]
        return DescriptionSet(list(data), descs, kind or _guess_kind(descs), {**prov, "format": "class-to-list"})
    except DescriptionError as e:
        msg = str(e)
        raise DescriptionError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def save_descriptions(path: str | Path, dset: DescriptionSet, **provenance) -> Path:
    """Write visroute's format with provenance (generator, prompt, date, ... as given)."""
    from visroute.io import atomic_write_json

    prov = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **dset.provenance, **provenance}
    doc = {"format": FORMAT, "kind": dset.kind, "provenance": prov,
           "classes": [{"name": c, "descriptions": d} for c, d in zip(dset.classnames, dset.descriptions)]}
    return atomic_write_json(Path(path), doc, indent=1, ensure_ascii=False)
