"""Labelled image datasets behind one spec string.

Spec forms::

    <dir> | imagefolder:<dir>        ImageFolder layout: <dir>/<class>/<image>; classes = sorted folder names
    <file>.csv | <file>.jsonl        manifest with columns path,label (+ extra columns kept as-is);
                                     label is a class name or an integer index; paths relative to the file
    hf:<dir saved with save_to_disk> | hf:<hub id>   Hugging Face `datasets` (local or already cached)
    torchvision:<Name>:<root>        a torchvision built-in that is already downloaded (e.g. CIFAR10)

Options after ``#`` (``hf:/data/pets#split=test&image=img&label=lbl``): ``split``, ``image``, ``label``
(column names), and for torchvision ``train=1``. Every dataset is an item source: ``len``, ``load(i)`` (a
decoded RGB image or ImageDecodeError), ``item_id(i)``, ``labels`` (int array, each a valid class index: see
``visroute.data.labels``), ``classnames``, ``extra`` (manifest / dataset columns) and a ``fingerprint`` that
changes when the data does. Images larger than ``max_pixels`` (default: ``visroute.data.images``) are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from visroute.data.images import (IMAGE_EXTENSIONS, ImageDecodeError, check_pixels, load_image, not_a_regular_file,
                                  resolve_max_pixels, to_rgb)
from visroute.data.labels import DatasetError, labels_to_indices  # noqa: F401  (DatasetError: public here too)


class ImageDataset:
    """Base: subclasses set ``name``, ``classnames``, ``labels``, ``extra`` and implement ``load``/``item_id``."""

    name: str
    classnames: list[str]
    labels: np.ndarray
    extra: dict[str, list]
    spec: str
    max_pixels: int | None = None  # None: $VISROUTE_MAX_PIXELS or the default

    def __len__(self) -> int:
        return len(self.labels)

    def item_id(self, i: int) -> str:
        raise NotImplementedError

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        raise NotImplementedError

    def with_classnames(self, classnames: list[str]) -> "ImageDataset":
        """Replace the dataset's class names (e.g. CLIP_benchmark's prettier names), same order."""
        if len(classnames) != len(self.classnames):
            raise DatasetError(
                f"{len(classnames)} class names given for dataset '{self.name}', which has {len(self.classnames)} classes"
            )
        self.classnames = list(classnames)
        return self


class FileDataset(ImageDataset):
    """Images stored as files with integer labels."""

    def __init__(self, name: str, spec: str, root: Path, paths: list[Path], labels: list[int],
                 classnames: list[str], extra: dict[str, list] | None = None):
        self.name, self.spec, self.root = name, spec, root
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classnames = classnames
        self.extra = extra or {}

    def item_id(self, i: int) -> str:
        p = Path(self.paths[i])
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        return load_image(self.paths[i], draft_size, self.max_pixels)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels):
            try:
                st = os.stat(p)
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{y}\n".encode())
            except OSError:
                h.update(f"{p}\0missing\0{y}\n".encode())
        return h.hexdigest()[:16]


class HFImageDataset(ImageDataset):
    """A Hugging Face ``datasets.Dataset`` with an image column and a (ClassLabel or int/str) label column."""

    def __init__(self, name: str, spec: str, ds: Any, image_column: str, label_column: str):
        self.name, self.spec = name, spec
        missing = [c for c in (image_column, label_column) if c not in ds.column_names]
        if missing:
            raise DatasetError(f"dataset '{spec}' has no column(s) {missing}; columns: {ds.column_names} "
                               "(choose with #image=COL&label=COL)")
        self.ds = ds.cast_column(image_column, _undecoded_image_feature()) if _is_image_feature(ds, image_column) else ds
        self.image_column = image_column
        feature = ds.features[label_column]
        raw = list(ds[label_column])
        names = list(feature.names) if hasattr(feature, "names") else None
        if raw and all(type(v) is int for v in raw):
            raw = np.asarray(raw, dtype=np.int64) if all(abs(v) < 2**62 for v in raw) else raw
        self.labels, self.classnames = labels_to_indices(raw, lambda i: f"dataset '{spec}' row {i}", names)
        self.extra = {c: ds[c] for c in ds.column_names if c not in (image_column, label_column)
                      and not _is_image_feature(ds, c)}
        self._fingerprint = getattr(ds, "_fingerprint", None) or hashlib.sha256(repr(ds).encode()).hexdigest()

    def item_id(self, i: int) -> str:
        return str(i)

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        value = self.ds[i][self.image_column]
        try:
            if isinstance(value, Image.Image):
                check_pixels(value.size, resolve_max_pixels(self.max_pixels))
                return to_rgb(value)
            if isinstance(value, dict) and value.get("bytes"):
                with Image.open(io.BytesIO(value["bytes"])) as im:
                    if draft_size and im.format == "JPEG":
                        im.draft("RGB", (draft_size, draft_size))
                    check_pixels(im.size, resolve_max_pixels(self.max_pixels))
                    im.load()
                    from PIL import ImageOps

                    return to_rgb(ImageOps.exif_transpose(im))
            if isinstance(value, dict) and value.get("path"):
                return load_image(value["path"], draft_size, self.max_pixels)
        except ImageDecodeError:
            raise
        except Exception as e:
            raise ImageDecodeError(f"corrupt image in dataset row {i} ({e})") from None
        raise ImageDecodeError(f"row {i} has no image")

    @property
    def fingerprint(self) -> str:
        return str(self._fingerprint)[:16]


class TorchvisionDataset(ImageDataset):
    """A torchvision built-in dataset that is already on disk (never downloads)."""

    def __init__(self, name: str, spec: str, ds: Any, root: str):
        self.name, self.spec, self.ds = name, spec, ds
        targets = getattr(ds, "targets", None)
        targets = getattr(ds, "labels", None) if targets is None else targets  # may be an array: no `or`
        raw = np.asarray(targets if targets is not None else [ds[i][1] for i in range(len(ds))])
        classes = getattr(ds, "classes", None)
        self.labels, self.classnames = labels_to_indices(raw, lambda i: f"torchvision {name} item {i}",
                                                         list(classes) if classes is not None else None)
        self.extra = {}
        self._fp = hashlib.sha256(f"{type(ds).__name__}\0{root}\0{len(ds)}".encode()).hexdigest()[:16]

    def item_id(self, i: int) -> str:
        return str(i)

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        try:
            image = self.ds[i][0]
        except Exception as e:
            raise ImageDecodeError(f"could not read item {i} ({e})") from None
        return to_rgb(image)

    @property
    def fingerprint(self) -> str:
        return self._fp


def _is_image_feature(ds: Any, column: str) -> bool:
    return type(ds.features.get(column)).__name__ == "Image"


def _undecoded_image_feature() -> Any:
    from datasets import Image as HFImage

    return HFImage(decode=False)  # decode in our workers, where a corrupt row is a counted skip


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    base, _, query = spec.partition("#")
    return base, dict(parse_qsl(query))


def load_dataset(spec: str, classnames: list[str] | None = None, max_pixels: int | None = None) -> ImageDataset:
    """Open a dataset spec (see module docstring); ``classnames`` overrides the dataset's own names.

    ``max_pixels`` bounds the images decoded (0: no limit; None: $VISROUTE_MAX_PIXELS or the default).
    """
    resolve_max_pixels(max_pixels)
    base, opts = _split_options(spec)
    if base.startswith("hf:"):
        ds = _open_hf(base[3:], opts, spec)
    elif base.startswith("torchvision:"):
        ds = _open_torchvision(base[len("torchvision:"):], opts, spec)
    else:
        path = Path(base[len("imagefolder:"):] if base.startswith("imagefolder:") else base).expanduser()
        if path.is_dir():
            ds = _open_imagefolder(path, spec)
        elif path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
            ds = _open_manifest(path, spec, opts, classnames)
        elif path.exists() and not_a_regular_file(path):
            raise DatasetError(f"dataset '{spec}' is {not_a_regular_file(path)}")
        else:
            raise DatasetError(
                f"dataset '{spec}' not found: use an ImageFolder directory, a .csv/.jsonl manifest, "
                "hf:<saved dataset dir or cached hub id>, or torchvision:<Name>:<root>"
            )
    ds.max_pixels = max_pixels
    return ds.with_classnames(classnames) if classnames is not None else ds


def _open_imagefolder(root: Path, spec: str) -> FileDataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetError(f"'{root}' has no class sub-folders (ImageFolder layout: {root}/<class>/<image>)")
    paths, labels = [], []
    for k, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise DatasetError(f"no image files under '{root}'")
    return FileDataset(root.name, spec, root, paths, labels, classes)


def _manifest_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise DatasetError(f"cannot read manifest {path}: {e.strerror or e}") from None


def _read_manifest_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for each row of a CSV (with header) or JSONL manifest."""
    text = _manifest_text(path)
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = []
        try:
            for row in reader:
                if None in row:
                    raise DatasetError(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} fields, "
                                       f"but the header has {len(reader.fieldnames or [])}")
                rows.append((reader.line_num, row))
        except csv.Error as e:
            raise DatasetError(f"{path}:{reader.reader.line_num}: not valid CSV ({e})") from None
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DatasetError(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{n}: each line must be a JSON object, found {type(row).__name__}")
        rows.append((n, row))
    return rows


def _manifest_path(base: Path, value: Any, at: str, column: str) -> Path:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise DatasetError(f"{at}: the '{column}' value must be an image file path, found {str(value)[:60]!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _open_manifest(path: Path, spec: str, opts: dict[str, str], classnames: list[str] | None = None) -> FileDataset:
    numbered = _read_manifest_rows(path)
    pcol, lcol = opts.get("image", "path"), opts.get("label", "label")
    if not numbered:
        raise DatasetError(f"manifest '{path}' has no rows")
    rows = [r for _, r in numbered]
    missing = [c for c in (pcol, lcol) if c not in rows[0]]
    if missing:
        raise DatasetError(f"manifest '{path}' lacks column(s) {missing}; has {sorted(rows[0])} (#image=COL&label=COL)")

    def where(i: int) -> str:
        return f"{path}:{numbered[i][0]}"

    labels, names = labels_to_indices([r.get(lcol) for r in rows], where, classnames)
    paths = [_manifest_path(path.parent, r.get(pcol), where(i), pcol) for i, r in enumerate(rows)]
    first: dict = {}
    clash = []
    for i, (p, y) in enumerate(zip(paths, labels)):  # one image with two labels: at most one of them is right
        j = first.setdefault(p, i)
        if labels[j] != y:
            clash.append((i, j, p, y))
    if clash:
        import logging

        i, j, p, y = clash[0]
        logging.getLogger("visroute").warning(
            f"{path}: {len(clash)} row(s) give an image a second, different label (first: {where(i)}: {p.name} is "
            f"'{names[y]}' here but '{names[labels[j]]}' at {where(j)}); each row is scored against its own label")
    extra = {c: [r.get(c) for r in rows] for c in rows[0] if c not in (pcol, lcol)}
    return FileDataset(path.stem, spec, path.parent.resolve(), paths, labels, names, extra)


def _open_hf(location: str, opts: dict[str, str], spec: str) -> HFImageDataset:
    try:
        import datasets
    except ImportError as e:
        from visroute.errors import MissingExtraError

        raise MissingExtraError("datasets", "datasets", f"dataset '{spec}'") from e
    split = opts.get("split")
    try:
        if Path(location).expanduser().is_dir():
            obj = datasets.load_from_disk(str(Path(location).expanduser()))
        else:
            obj = datasets.load_dataset(location, split=split)
    except Exception as e:
        raise DatasetError(f"could not open Hugging Face dataset '{location}' ({type(e).__name__}: {e}); "
                           "pass a directory saved with save_to_disk, or a hub id already in the local cache") from None
    if isinstance(obj, datasets.DatasetDict):
        names = list(obj)
        split = split or ("test" if "test" in obj else names[0])
        if split not in obj:
            raise DatasetError(f"dataset '{location}' has no split '{split}' (splits: {names})")
        obj = obj[split]
    name = Path(location).name or location
    return HFImageDataset(name, spec, obj, opts.get("image", "image"), opts.get("label", "label"))


def _open_torchvision(rest: str, opts: dict[str, str], spec: str) -> TorchvisionDataset:
    name, _, root = rest.partition(":")
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        from visroute.errors import MissingExtraError

        raise MissingExtraError("openclip", "torchvision", f"dataset '{spec}'") from e
    cls = getattr(tvd, name, None)
    if cls is None:
        raise DatasetError(f"torchvision has no dataset '{name}'")
    train = opts.get("train", "0") in ("1", "true", "yes")
    root = root or "."
    attempts = ({"train": train, "download": False}, {"split": "train" if train else "test", "download": False}, {})
    ds, last = None, None
    for kw in attempts:  # built-ins differ: train=bool (CIFAR, MNIST), split=str (SVHN, Flowers102), neither
        try:
            ds = cls(root=root, **kw)
            break
        except TypeError as e:
            last = e
        except (RuntimeError, FileNotFoundError, OSError) as e:
            raise DatasetError(f"torchvision {name} is not available under '{root}' ({e}); visroute never downloads") from None
    if ds is None:
        raise DatasetError(f"cannot construct torchvision {name} ({last})")
    return TorchvisionDataset(name.lower(), spec, ds, root)


class SubsetDataset(ImageDataset):
    """The items ``indices`` of another dataset (same classes), e.g. a quick grid on part of a test set."""

    def __init__(self, base: ImageDataset, indices):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.name, self.spec = base.name, f"{base.spec}[{len(self.indices)} of {len(base)}]"
        self.classnames = base.classnames
        self.labels = base.labels[self.indices]
        self.extra = {k: [v[i] for i in self.indices] for k, v in base.extra.items()}
        if hasattr(base, "paths"):
            self.paths = [base.paths[i] for i in self.indices]

    def item_id(self, i: int) -> str:
        return self.base.item_id(self.indices[i])

    def load(self, i: int, draft_size: int | None = None) -> Image.Image:
        return self.base.load(self.indices[i], draft_size)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.base.fingerprint}:{self.indices}".encode()).hexdigest()[:16]


def spread_subset(dataset: ImageDataset, limit: int | None) -> ImageDataset:
    """At most ``limit`` items, evenly spread over the dataset (so every class of a sorted folder appears)."""
    if not limit or limit >= len(dataset):
        return dataset
    return SubsetDataset(dataset, np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(int)))
