"""Data a recipe run prepares in its own folder: tiny stand-in datasets, selection/test splits of one folder, a
filtered manifest, and task files with absolute image paths. Everything is written as plain CSV / JSONL manifests,
so each stage reads its data through the ordinary dataset and task loaders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from visroute.errors import VisrouteError


def _write_manifest(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return str(path)


def _sample_rows(data_root: Path) -> list[dict]:
    labels = data_root / "imagenet-sample" / "labels.csv"
    try:
        with open(labels, encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as e:
        raise VisrouteError(f"tiny stand-ins need {labels} ({e.strerror or e}); set --data-root") from None


def common_classnames(pools: list[str], k: int) -> list[str]:
    """The first ``k`` classes (in the first pool's order) that every description pool names: a stand-in dataset
    with these classes aligns with all of its pools by name."""
    from visroute.descriptions import load_descriptions
    from visroute.heads.description_sets import normalise_name

    sets = [load_descriptions(p) for p in pools]
    others = [{normalise_name(c) for c in s.classnames} for s in sets[1:]]
    names = [c for c in sets[0].classnames if all(normalise_name(c) in o for o in others)]
    if len(names) < 2:
        raise VisrouteError(f"the description files {pools} share fewer than two class names")
    return names[:k]


def standin_dataset(out: Path, data_root: Path, classnames: list[str], test_per_class: int, selection_per_class: int,
                    offset: int) -> tuple[str, str]:
    """Test and selection manifests of real ImageNet-sample JPEGs relabelled with ``classnames`` (round robin,
    starting at image ``offset``; the two sets share no image). The labels are not true for the images: a stand-in
    exercises every stage of a recipe on the dataset's real description files, not its accuracy."""
    rows = _sample_rows(data_root)
    per = test_per_class + selection_per_class
    need = len(classnames) * per
    files = [str(data_root / "imagenet-sample" / r["file"]) for r in rows]
    picked = [files[(offset + i) % len(files)] for i in range(need)]
    test, sel = [], []
    for i, f in enumerate(picked):
        c, j = classnames[i % len(classnames)], i // len(classnames)
        (test if j < test_per_class else sel).append((f, c))
    return _write_manifest(out / "test.csv", test), _write_manifest(out / "selection.csv", sel)


def holdout_split(spec: str, per_class: int, out: Path, classnames: list[str] | None = None) -> tuple[str, str]:
    """One labelled folder -> (test manifest, selection manifest): the first ``per_class`` images of each class
    (clipped to the smallest class, leaving at least one to test) are the selection set, the rest are tested."""
    from visroute.data.datasets import load_dataset

    ds = load_dataset(spec, classnames)
    if not hasattr(ds, "paths"):
        raise VisrouteError(f"dataset '{spec}' is not made of image files; give separate test and selection specs")
    counts = [int((ds.labels == c).sum()) for c in range(len(ds.classnames))]
    n = max(1, min(per_class, min(counts) - 1))
    seen = [0] * len(ds.classnames)
    test, sel = [], []
    for p, y in zip(ds.paths, ds.labels):
        (sel if seen[y] < n else test).append((p, ds.classnames[y]))
        seen[y] += 1
    return _write_manifest(out / "test.csv", test), _write_manifest(out / "selection.csv", sel)


def filtered_manifest(source: str, out: Path, image: str, label: str, class_index: list[int]) -> str:
    """Rows of a CSV manifest whose ``class_index`` is listed (e.g. the landscape classes of the ImageNet sample)."""
    try:
        with open(source, encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise VisrouteError(f"cannot read manifest {source}: {e.strerror or e}") from None
    keep = set(int(i) for i in class_index)
    base = Path(source).parent
    picked = [(str(base / r[image]), r[label]) for r in rows if int(r.get("class_index", -1)) in keep]
    if not picked:
        raise VisrouteError(f"{source}: no row has a class_index in {sorted(keep)}")
    return _write_manifest(out, picked)


def task_file(spec: str, out: Path, data_root: Path, from_package: bool) -> str:
    """A task set as a JSONL file with absolute image paths (what a grid reads). A shipped task file names its
    images relative to the data root; a hub / saved task set has its images written out as PNG files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    if from_package:
        for line in Path(spec).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("image"):
                    row["image"] = str(data_root / row["image"])
                rows.append(row)
    else:
        from visroute.tasks.model import load_tasks

        tasks, _skipped = load_tasks(spec)
        (out.parent / "images").mkdir(exist_ok=True)
        for t in tasks:
            image = t.image
            if image is not None and not isinstance(image, str):
                path = out.parent / "images" / f"{len(rows):07d}.png"
                image.convert("RGB").save(path)
                image = str(path)
            rows.append({"id": t.task_id, "image": image, "question": t.question, "choices": t.options,
                         "answer": t.answer, "context": t.context})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(out)
