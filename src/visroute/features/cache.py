"""On-disk image-feature cache: encode every image once per (model weights, preprocessing, dataset).

Layout: ``<root>/<key>/meta.json`` plus ``shard-NNNNNN.safetensors`` files, each holding the
embeddings of items ``[k*shard_size, (k+1)*shard_size)`` that decoded (``indices``, ``embeddings``)
and, in its metadata, the items that did not. Shards are written to a temporary file and renamed,
so a killed run leaves only complete shards and the next run resumes after the last one. Reading
streams shard by shard, so memory does not grow with the dataset.

``meta.json`` records each shard's size and sha256 (``"shards": {"3": {"bytes": ..., "sha256": ...}}``).
A shard that is truncated, corrupted or swapped for another is found before it is used: it is deleted,
recomputed and counted (``FeatureSet.shards_damaged``, one warning), and ``cache ls`` shows its entry as
damaged. A shard on disk with no record (a run killed between writing it and recording it, or a cache
written before records existed) is checked for structure and adopted, or recomputed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from visroute.data.images import SkippedFile
from visroute.errors import VisrouteError
from visroute.features.encode import LocalEncoder
from visroute.models.contrastive import ContrastiveModel
from visroute.io import TMP_PREFIX, atomic_write_bytes, atomic_write_json, cache_root, file_lock
from visroute.log import get_logger

CACHE_FORMAT = 1

log = get_logger(__name__)


class CacheWriteError(VisrouteError):
    """A shard could not be written (disk full, permissions); completed shards are kept."""


class FeatureCacheDamaged(VisrouteError):
    """A shard changed on disk after it was checked (another process, a failing disk)."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_problem(path: Path, record: dict | None) -> str | None:
    """Why a recorded shard cannot be used (missing, wrong size, wrong checksum), or None when it is intact."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing"
    if not isinstance(record, dict):
        return "no record"
    if size != record.get("bytes"):
        return f"{size} bytes, {record.get('bytes')} recorded"
    if _sha256_file(path) != record.get("sha256"):
        return "checksum differs from the recorded one"
    return None


def feature_cache_key(model: ContrastiveModel, dataset, decode: str = "exact") -> str:
    """The entry's name: model weights and preprocessing, how images were decoded, the dataset and pixel limit."""
    from visroute.data.batches import choose_decoding
    from visroute.data.images import resolve_max_pixels

    how = choose_decoding(model.preprocess, decode, num_workers=0)
    # the pixel limit decides which images are skipped, so shards made under another limit are not reused
    parts = [f"format={CACHE_FORMAT}", model.spec, model.weights_fingerprint, str(model.dtype),
             model.preprocess_fingerprint, how.key, dataset.fingerprint, str(len(dataset)),
             f"max_pixels={resolve_max_pixels(getattr(dataset, 'max_pixels', None))}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


@dataclass
class FeatureSet:
    """A complete cached entry: stream it with ``iter_shards`` or load it whole with ``load``."""

    directory: Path
    n_items: int
    shard_size: int
    key: str
    images_encoded: int = 0
    shards_reused: int = 0
    seconds_per_image: float | None = None  # measured when the features were encoded (kept in meta.json)
    skipped: list[SkippedFile] = field(default_factory=list)
    shards_damaged: int = 0  # shards found truncated, corrupted or swapped, and recomputed
    records: dict = field(default_factory=dict)  # shard number (str) -> {"bytes", "sha256"}

    @property
    def n_shards(self) -> int:
        return (self.n_items + self.shard_size - 1) // self.shard_size

    def shard_path(self, k: int) -> Path:
        return self.directory / f"shard-{k:06d}.safetensors"

    def iter_shards(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield (item indices, L2-normalised embeddings) shard by shard, each checked against its record."""
        from safetensors.torch import load

        for k in range(self.n_shards):
            path = self.shard_path(k)
            try:
                raw = path.read_bytes()
            except OSError as e:
                raise FeatureCacheDamaged(f"feature shard {path} cannot be read ({e.strerror or e}); "
                                          "re-run to recompute it") from None
            rec = self.records.get(str(k))
            if rec is not None and (len(raw) != rec.get("bytes") or hashlib.sha256(raw).hexdigest() != rec.get("sha256")):
                raise FeatureCacheDamaged(f"feature shard {path} changed after it was checked; re-run to recompute it")
            data = load(raw)
            yield data["indices"].numpy(), data["embeddings"]

    def load(self) -> tuple[np.ndarray, torch.Tensor]:
        parts = list(self.iter_shards())
        if not parts:
            return np.empty(0, dtype=np.int64), torch.empty(0, 0)
        return np.concatenate([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class FeatureCache:
    """Directory of cached feature sets (default ``$VISROUTE_CACHE/features``)."""

    def __init__(self, root: str | Path | None = None, engine=None):
        """``engine`` encodes the shards that are missing: an engine of ``visroute.engine`` (Ray's spreads them over
        its actors), or, when none is handed down, ``LocalEncoder`` (this process, as the local engine does)."""
        self.root = Path(root) if root is not None else cache_root() / "features"
        self.engine = engine if engine is not None else LocalEncoder()

    def entries(self) -> list[dict]:
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            meta_file = d / "meta.json"
            if not meta_file.is_file():
                continue
            meta = _read_meta(meta_file) or {}
            n_shards = meta.get("n_shards", 0)
            records = meta.get("shards", {})
            files = sorted(d.glob("shard-*.safetensors"))
            damaged = [f.name for f in files
                       if _shard_key(f) in records and shard_problem(f, records[_shard_key(f)])]
            if not meta:
                damaged.append("meta.json")
            done = len(files) - len(damaged)
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            out.append({"key": d.name, "model": meta.get("model"), "dataset": meta.get("dataset"),
                        "n_items": meta.get("n_items"), "shards_done": done, "n_shards": n_shards,
                        "complete": done >= n_shards > 0 and not damaged, "damaged": damaged, "bytes": size})
        return out

    def clear(self, key: str | None = None) -> int:
        """Delete one entry (by key or key prefix) or all; returns the number removed. An entry another process
        is encoding (its lock is held) is left alone, with a warning, so its shards and temp files survive."""
        from visroute.io import LockTimeout

        removed = 0
        if not self.root.is_dir():
            return 0
        for d in list(self.root.iterdir()):
            if d.is_dir() and (key is None or d.name.startswith(key)):
                try:
                    with file_lock(d / ".lock", timeout=0):
                        shutil.rmtree(d, ignore_errors=True)
                except LockTimeout:
                    log.warning("feature cache entry %s is being written by another process; not removed", d.name)
                    continue
                removed += 1
        return removed

    def encode(self, model: ContrastiveModel, dataset, shard_size: int = 2048, batch_size: int = 64,
               num_workers: int | None = None, decode: str = "exact", progress: bool = False) -> FeatureSet:
        """Return the dataset's features, encoding only the shards not already on disk.

        One process encodes an entry at a time (a file lock in the entry): a second process asking for
        the same features waits, then reuses every shard, and never sweeps away the first one's temp files.
        """
        key = feature_cache_key(model, dataset, decode)
        directory = self.root / key
        with ExitStack() as stack:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                stack.enter_context(file_lock(directory / ".lock", on_wait=lambda: log.warning(
                    "waiting for another process that is encoding the same features (%s)", directory)))
            except OSError as e:
                raise CacheWriteError(f"cannot write the feature cache at {directory} ({e}); "
                                      "set VISROUTE_CACHE to a writable directory") from None
            return self._encode_locked(key, directory, model, dataset, shard_size, batch_size, num_workers,
                                       decode, progress)

    def _encode_locked(self, key: str, directory: Path, model: ContrastiveModel, dataset, shard_size: int,
                       batch_size: int, num_workers: int | None, decode: str, progress: bool) -> FeatureSet:
        meta_file = directory / "meta.json"
        meta = _read_meta(meta_file)
        if meta is not None:
            shard_size = int(meta["shard_size"])
        fs = FeatureSet(directory, len(dataset), shard_size, key)
        if meta is None and meta_file.exists():  # a torn or edited index: nothing in the entry can be trusted
            log.warning("feature cache %s: meta.json is damaged; the entry is rebuilt", directory)
            for f in directory.glob("shard-*.safetensors"):
                f.unlink(missing_ok=True)
            meta_file.unlink(missing_ok=True)
        try:
            if not meta_file.is_file():
                meta = {"format": CACHE_FORMAT, "model": model.spec, "weights": model.weights_fingerprint,
                        "dataset": getattr(dataset, "spec", None), "dataset_fingerprint": dataset.fingerprint,
                        "n_items": len(dataset), "shard_size": shard_size, "n_shards": fs.n_shards,
                        "decode": decode}
                atomic_write_json(meta_file, meta, indent=1)
        except OSError as e:
            raise CacheWriteError(f"cannot write the feature cache at {directory} ({e})") from None

        for stale in directory.glob(TMP_PREFIX + "*"):  # torn writes of a killed run (we hold the lock); never read
            stale.unlink(missing_ok=True)
        missing = self._check_shards(fs, meta_file)
        fs.shards_reused = fs.n_shards - len(missing)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(dataset), initial=min(len(dataset), fs.shards_reused * shard_size) if missing else len(dataset),
                       unit="img", desc=f"features {getattr(dataset, 'name', '')}", dynamic_ncols=True)
        try:
            if missing:
                import time

                t0 = time.perf_counter()
                self._encode_shards(model, dataset, fs, missing, batch_size, num_workers, decode, bar)
                if fs.images_encoded:
                    meta = json.loads(meta_file.read_text())
                    meta["seconds_per_image"] = (time.perf_counter() - t0) / fs.images_encoded
                    atomic_write_json(meta_file, meta, indent=1)
        finally:
            if bar is not None:
                bar.close()
        try:
            fs.seconds_per_image = json.loads(meta_file.read_text()).get("seconds_per_image")
        except (OSError, ValueError):
            pass
        fs.skipped = self._read_failures(fs)
        return fs

    def _encode_shards(self, model, dataset, fs: FeatureSet, missing: list[int], batch_size, num_workers,
                       decode, bar) -> None:
        n, size = fs.n_items, fs.shard_size
        indices = [i for k in missing for i in range(k * size, min((k + 1) * size, n))]
        expected = {k: min((k + 1) * size, n) - k * size for k in missing}
        buf: dict[int, dict] = {}
        for idx, emb, skipped in self.engine.map_images(model, dataset, batch_size, decode=decode,
                                                        num_workers=num_workers, indices=indices):
            fs.images_encoded += len(idx)
            for row, i in enumerate(idx):
                b = buf.setdefault(i // size, {"idx": [], "emb": [], "fail": [], "seen": 0})
                b["idx"].append(i)
                b["emb"].append(emb[row])
                b["seen"] += 1
            for s in skipped:
                b = buf.setdefault(s.index // size, {"idx": [], "emb": [], "fail": [], "seen": 0})
                b["fail"].append([s.index, s.path, s.reason])
                b["seen"] += 1
            for k in [k for k, b in buf.items() if b["seen"] == expected[k]]:
                self._write_shard(fs, k, buf.pop(k))
            if bar is not None:
                bar.update(len(idx) + len(skipped))

    @staticmethod
    def _write_shard(fs: FeatureSet, k: int, b: dict) -> None:
        from safetensors.torch import save

        emb = torch.stack(b["emb"]) if b["emb"] else torch.empty(0, 0)
        data = save({"indices": torch.tensor(b["idx"], dtype=torch.int64), "embeddings": emb.contiguous()},
                    metadata={"failures": json.dumps(b["fail"])})
        try:
            atomic_write_bytes(fs.shard_path(k), data)
            fs.records[str(k)] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            _write_records(fs)
        except OSError as e:
            raise CacheWriteError(
                f"could not write feature shard {fs.shard_path(k)} ({e}); the {k} shard(s) before it are kept "
                "and a re-run resumes from there"
            ) from None

    def _check_shards(self, fs: FeatureSet, meta_file: Path) -> list[int]:
        """Shards to (re)compute: missing ones, and damaged ones (deleted here, counted and reported)."""
        meta = _read_meta(meta_file) or {}
        fs.records = {str(k): v for k, v in (meta.get("shards") or {}).items()}
        missing, damaged, adopted = [], [], False
        for k in range(fs.n_shards):
            path, rec = fs.shard_path(k), fs.records.get(str(k))
            if not path.is_file():
                fs.records.pop(str(k), None)
                missing.append(k)
                continue
            why = shard_problem(path, rec) if rec is not None else _unrecorded_problem(fs, k)
            if why is None:
                if rec is None:  # written by a run killed before it recorded it, or before records existed
                    fs.records[str(k)] = {"bytes": path.stat().st_size, "sha256": _sha256_file(path)}
                    adopted = True
                continue
            damaged.append(f"{path.name} ({why})")
            fs.records.pop(str(k), None)
            path.unlink(missing_ok=True)
            missing.append(k)
        if damaged:
            fs.shards_damaged = len(damaged)
            log.warning("feature cache %s: %d damaged shard(s) recomputed: %s", fs.directory, len(damaged),
                        "; ".join(damaged[:5]) + (" ..." if len(damaged) > 5 else ""))
        if damaged or adopted:
            try:
                _write_records(fs)
            except OSError as e:
                raise CacheWriteError(f"cannot write the feature cache at {fs.directory} ({e})") from None
        return missing

    @staticmethod
    def _read_failures(fs: FeatureSet) -> list[SkippedFile]:  # shards were checked by _check_shards
        from safetensors import safe_open

        out = []
        for k in range(fs.n_shards):
            with safe_open(str(fs.shard_path(k)), framework="pt") as f:
                for i, path, reason in json.loads((f.metadata() or {}).get("failures", "[]")):
                    out.append(SkippedFile(path, reason, i))
        return out


def _shard_key(path: Path) -> str:
    """``shard-000003.safetensors`` -> ``"3"``, the key of its record in meta.json."""
    digits = path.name[len("shard-"):].split(".")[0]
    return str(int(digits)) if digits.isdigit() else path.name


def _read_meta(meta_file: Path) -> dict | None:
    """The entry's index, or None when it is missing or unusable."""
    try:
        meta = json.loads(meta_file.read_text())
        int(meta["shard_size"])
        return meta if isinstance(meta.get("shards", {}), dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_records(fs: FeatureSet) -> None:
    """Record the shards' sizes and checksums in meta.json (the caller holds the entry lock)."""
    meta_file = fs.directory / "meta.json"
    meta = _read_meta(meta_file) or {}
    meta["shards"] = dict(sorted(fs.records.items(), key=lambda kv: int(kv[0])))
    atomic_write_json(meta_file, meta, indent=1)


def _unrecorded_problem(fs: FeatureSet, k: int) -> str | None:
    """A shard with no record is adopted only if it parses and holds exactly the items of shard ``k``."""
    from safetensors import safe_open

    lo, hi = k * fs.shard_size, min((k + 1) * fs.shard_size, fs.n_items)
    try:
        with safe_open(str(fs.shard_path(k)), framework="pt") as f:
            idx = f.get_tensor("indices").tolist()
            fails = [int(x[0]) for x in json.loads((f.metadata() or {}).get("failures", "[]"))]
            n_emb = f.get_slice("embeddings").get_shape()[0] if idx else 0
    except Exception as e:  # safetensors raises its own error types for a torn header
        return f"unreadable ({type(e).__name__})"
    if sorted(idx + fails) != list(range(lo, hi)) or n_emb != len(idx):
        return "holds other items than its own"
    return None
