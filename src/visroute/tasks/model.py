"""The task model and its loaders.

A task is one image, an instruction or question, response options and (for evaluation) the index of the
right option. Sources: multiple-choice manifests (JSONL / CSV: image, question, choices, answer, optional
context — ScienceQA-style), Hugging Face datasets with those columns, and any classification dataset,
whose class names become the options (all of them, or each image's top-k from a CLIP pre-filter).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visroute.errors import VisrouteError
from visroute.tasks.parse import LETTERS, normalise


class TaskError(VisrouteError):
    """A task file is malformed (the message names the row)."""


@dataclass
class Task:
    task_id: str
    image: Any  # a file path, a PIL image (HF datasets), or None for a text-only task
    question: str
    options: list[str]
    answer: int | None = None
    context: str = ""
    dataset: str = ""
    kind: str = "vqa"  # "vqa", "text" (no image) or "classification"
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """What a router reads (see ``task_text``)."""
        return task_text(self.question, self.options)


def task_text(question: str, options: list[str] | None = None, max_options: int = 20) -> str:
    """The router's view of a task: the instruction and its options, nothing else.

    The one function behind both the records a router is trained on and the query it routes, so the two
    always have the same format. The dataset name is deliberately absent: a user's query has none.
    Long option lists (classification over many classes) are abbreviated.
    """
    options = list(options or [])
    if not options:
        return question.strip()
    shown = options[:max_options]
    more = f"; ... ({len(options)} options)" if len(options) > max_options else ""
    return f"{question.strip()} Options: {'; '.join(shown)}{more}."


def _answer_index(raw: Any, options: list[str], where: str) -> int | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, (int, np.integer)) or (isinstance(raw, str) and raw.strip().isdigit()):
        i = int(raw)
        if not 0 <= i < len(options):
            raise TaskError(f"{where}: answer index {i} is outside the {len(options)} options")
        return i
    s = str(raw).strip()
    if len(s) == 1 and s.upper() in LETTERS[: len(options)]:
        return LETTERS.index(s.upper())
    norm = [normalise(o) for o in options]
    if normalise(s) in norm:
        return norm.index(normalise(s))
    raise TaskError(f"{where}: answer {raw!r} is not one of the options {options}")


def _options(raw: Any, where: str) -> list[str]:
    if isinstance(raw, str):
        raw = raw.strip()
        if raw.startswith("["):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise TaskError(f"{where}: choices look like JSON but do not parse") from None
        else:
            raw = [x.strip() for x in raw.split("|")]
    if not isinstance(raw, (list, tuple)) or len(raw) < 2 or not all(isinstance(x, str) and x.strip() for x in raw):
        raise TaskError(f"{where}: need at least two non-empty choices, got {raw!r}")
    return [str(x) for x in raw]


def load_tasks(spec: str, dataset_name: str | None = None) -> tuple[list[Task], list[dict]]:
    """Multiple-choice tasks from a JSONL/CSV manifest or ``hf:<saved dir>``; returns (tasks, skipped rows)."""
    base, _, query = spec.partition("#")
    opts = dict(x.split("=", 1) for x in query.split("&") if "=" in x)
    if base.startswith("hf:"):
        return _load_hf_tasks(base[3:], opts, dataset_name)
    path = Path(base).expanduser()
    if not path.is_file():
        raise TaskError(f"task file '{spec}' does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append({"_error": f"line {n}: not valid JSON ({e.msg})"})
    name = dataset_name or path.stem
    tasks, skipped = [], []
    for n, row in enumerate(rows, 1):
        where = f"{path.name} row {n}"
        try:
            if "_error" in row:
                raise TaskError(f"{path.name} {row['_error']}")
            image = row.get(opts.get("image", "image")) or row.get("path")
            image_path = None if not image else (Path(image) if Path(image).is_absolute() else (path.parent / image))
            options = _options(row.get(opts.get("choices", "choices"), row.get("options")), where)
            question = str(row.get(opts.get("question", "question")) or "").strip()
            if not question:
                raise TaskError(f"{where}: empty question")
            answer = _answer_index(row.get(opts.get("answer", "answer")), options, where)
            tasks.append(Task(str(row.get("id", row.get("task_id", n - 1))),
                              str(image_path.resolve()) if image_path else None, question, options,
                              answer, str(row.get("context") or row.get("hint") or ""), name,
                              "vqa" if image_path else "text",
                              {k: v for k, v in row.items() if k not in ("image", "path", "question", "choices", "options",
                                                                         "answer", "context", "hint", "id", "task_id")}))
        except TaskError as e:
            skipped.append({"row": n, "reason": str(e)})
    return tasks, skipped


def _load_hf_tasks(location: str, opts: dict, dataset_name: str | None) -> tuple[list[Task], list[dict]]:
    try:
        import datasets
    except ImportError as e:
        from visroute.errors import MissingExtraError

        raise MissingExtraError("datasets", "datasets", f"tasks '{location}'") from e
    obj = datasets.load_from_disk(location) if Path(location).is_dir() else datasets.load_dataset(location)
    if isinstance(obj, datasets.DatasetDict):
        obj = obj[opts.get("split", "test" if "test" in obj else list(obj)[0])]
    tasks, skipped = [], []
    name = dataset_name or Path(location).name
    for n, row in enumerate(obj):
        where = f"{name} row {n}"
        try:
            image = row.get(opts.get("image", "image"))  # None: a text-only question (ScienceQA has many)
            options = _options(row.get(opts.get("choices", "choices")), where)
            tasks.append(Task(str(row.get("id", n)), image, str(row.get(opts.get("question", "question"), "")), options,
                              _answer_index(row.get(opts.get("answer", "answer")), options, where),
                              str(row.get("context") or row.get("hint") or ""), name, "vqa" if image is not None else "text"))
        except TaskError as e:
            skipped.append({"row": n, "reason": str(e)})
    return tasks, skipped


CLASSIFICATION_QUESTION = "What is shown in this image?"


def tasks_from_classification(dataset, top_k_options: np.ndarray | None = None,
                              question: str = CLASSIFICATION_QUESTION) -> list[Task]:
    """One task per image; options are all class names, or each image's pre-filtered top-k classes.

    With a pre-filter the true class may be missing from the options: such a task's answer is None
    and it counts as wrong (the pre-filter's miss), which the result reports.
    """
    classnames = list(dataset.classnames)
    tasks = []
    for i in range(len(dataset)):
        label = int(dataset.labels[i])
        if top_k_options is None:
            idx = list(range(len(classnames)))
        else:
            idx = [int(j) for j in top_k_options[i]]
        options = [classnames[j] for j in idx]
        answer = idx.index(label) if label in idx else None
        image = dataset.paths[i] if hasattr(dataset, "paths") else dataset.load(i)
        tasks.append(Task(dataset.item_id(i), image, question, options, answer, "", dataset.name, "classification",
                          {"label": label, "option_classes": idx}))
    return tasks
