"""Class names and prompt templates from the command line or from files.

Templates use CLIP_benchmark's ``{c}`` placeholder. A template or class-name file may be a text
file (one entry per line), a JSON list, or a JSON object keyed by dataset name (CLIP_benchmark's
``en_classnames.json`` / ``en_zeroshot_classification_templates.json``), selected with ``FILE:KEY``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from visroute.errors import LabelError, TemplateError

#: Templates used when none are given: a small, general-purpose ensemble.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a photo of the {c}.",
    "a close-up photo of a {c}.",
    "a cropped photo of a {c}.",
    "a bright photo of a {c}.",
    "a dark photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a good photo of a {c}.",
    "a drawing of a {c}.",
    "art of the {c}.",
)


def _split_file_key(spec: str) -> tuple[Path, str | None]:
    """'file.json:key' -> (file.json, key); a plain existing path -> (path, None)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path, None
    head, sep, key = spec.rpartition(":")
    if sep and Path(head).expanduser().exists():
        return Path(head).expanduser(), key
    return path, None


def _read_text(path: Path, spec: str, what: str, error: type[Exception]) -> str:
    """The file's text, or one error saying why it cannot be read (missing, a FIFO or device, not UTF-8)."""
    from visroute.data.images import not_a_regular_file

    why = not_a_regular_file(path)
    if why == "no such file":
        raise error(f"{what} file '{spec}' does not exist")
    if why:
        raise error(f"{what} file '{spec}' is {why}")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{what} file '{path}' is not UTF-8 text (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise error(f"cannot read {what} file '{path}': {e.strerror or e}") from None


def _non_string(items: list, path: Path, what: str, key: str | None, error: type[Exception]) -> None:
    where = f"{what} file '{path}'" + (f", key '{key}'" if key is not None else "")
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise error(f"{where}: expected a JSON list of strings, but item {i} is {type(x).__name__} {str(x)[:40]!r}")


def read_string_list(spec: str, what: str, error: type[Exception]) -> list[str]:
    """Read a list of strings from a .txt / .json file (``FILE:KEY`` picks a key of a JSON object)."""
    path, key = _split_file_key(spec)
    text = _read_text(path, spec, what, error)
    if path.suffix.lower() == ".csv":
        return _read_csv_column(path, text, key or "classname", what, error)
    if path.suffix.lower() == ".json":
        from visroute.safe_load import SafeLoadError, parse_json

        try:
            data = parse_json(text, f"{what} file '{path}'")
        except SafeLoadError as e:
            raise error(str(e)) from None
        if isinstance(data, dict):
            if key is None:
                raise error(
                    f"{what} file '{path}' is keyed by dataset; choose one with '{path}:KEY' "
                    f"(keys: {', '.join(sorted(data)[:20])}{', ...' if len(data) > 20 else ''})"
                )
            if key not in data:
                raise error(f"{what} file '{path}' has no key '{key}' (keys: {', '.join(sorted(data))})")
            data = data[key]
        if not isinstance(data, list):
            where = f"{what} file '{path}'" + (f", key '{key}'" if key is not None else "")
            raise error(f"{where}: expected a JSON list of strings, found {type(data).__name__}")
        _non_string(data, path, what, key, error)
        return list(data)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _read_csv_column(path: Path, text: str, column: str, what: str, error: type[Exception]) -> list[str]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    try:
        if not reader.fieldnames or column not in reader.fieldnames:
            raise error(f"{what} file '{path}' has no column '{column}' (columns: {reader.fieldnames}); "
                        f"use '{path}:COLUMN'")
        return [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    except csv.Error as e:
        raise error(f"{what} file '{path}', line {reader.reader.line_num}: not valid CSV ({e})") from None


def parse_labels(labels: str | None = None, labels_file: str | None = None) -> tuple[list[str], list[str]]:
    """Class names from ``--labels "a,b,c"`` or ``--labels-file``.

    Returns (unique names in first-seen order, names that were repeated). Repeated names are merged,
    because two identical labels could never be told apart in a prediction; an empty list is an error.
    """
    if labels and labels_file:
        raise LabelError("give either --labels or --labels-file, not both")
    if labels_file:
        names = read_string_list(labels_file, "labels", LabelError)
        try:
            validate_classnames(names, allow_duplicates=True)
        except LabelError as e:
            raise LabelError(f"labels file '{labels_file}': {e}") from None
    elif labels is not None:
        names = [x.strip() for x in labels.split(",")]
        names = [x for x in names if x]
    else:
        raise LabelError("no class labels given; use --labels 'cat,dog' or --labels-file FILE")
    validate_classnames(names, allow_duplicates=True)
    unique = list(dict.fromkeys(names))
    rows: dict[str, list[int]] = {}
    for i, n in enumerate(names, 1):
        rows.setdefault(n, []).append(i)
    repeated = [f"{n} (entries {', '.join(map(str, r))})" for n, r in rows.items() if len(r) > 1]
    return unique, repeated


def validate_classnames(names: list[str], allow_duplicates: bool = False) -> list[str]:
    """Reject an empty list, blank names and (unless allowed) duplicates, naming the offenders."""
    if not names:
        raise LabelError("the label list is empty; give at least one class name")
    blank = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if blank:
        raise LabelError(f"blank class name(s) at position(s) {blank}")
    if not allow_duplicates:
        dup = [n for n, k in Counter(names).items() if k > 1]
        if dup:
            raise LabelError(
                f"duplicate class name(s): {', '.join(repr(d) for d in dup)}; each label must be unique "
                "so that a prediction names one class"
            )
    return list(names)


def load_templates(spec: str | None = None) -> list[str]:
    """Templates from a file (or ``FILE:KEY``), or the shipped defaults when ``spec`` is None."""
    if spec is None:
        return validate_templates(list(DEFAULT_TEMPLATES))
    templates = read_string_list(spec, "templates", TemplateError)
    try:
        return validate_templates(templates)
    except TemplateError as e:
        raise TemplateError(f"templates file '{spec}': {e}") from None


def validate_templates(templates: list[str]) -> list[str]:
    if not templates:
        raise TemplateError("the template list is empty")
    bad = [t for t in templates if "{c}" not in t]
    if bad:
        raise TemplateError(f"template(s) without the {{c}} placeholder: {bad[:3]}")
    return templates
