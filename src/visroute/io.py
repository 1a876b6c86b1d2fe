"""Shared file mechanisms: atomic writes, the cache root and a cross-process lock.

Every file visroute writes (results, records, caches, description sets) goes through
:func:`atomic_open`, so a reader never sees a half-written file and a killed run leaves at most a
``.tmp-*`` file beside the target, never a torn one. Each write gets its own temporary name
(``tempfile.mkstemp``), so two writers of the same target never share a temporary file; the last
``os.replace`` wins. Written files get the usual ``0o666 & ~umask`` mode (mkstemp alone gives 0600).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from visroute.errors import VisrouteError

#: Prefix of every temporary file; a cache may delete stale ones while it holds its lock.
TMP_PREFIX = ".tmp-"


class LockTimeout(VisrouteError):
    """Another process held a cache lock for longer than the caller was willing to wait."""


class WriteError(VisrouteError, OSError):
    """A file could not be written (disk full, read-only, a file where a folder should be): one line; the target
    is left as it was. Still an ``OSError``, so callers that tolerate failed writes keep doing so."""


def _write_error(path: Path, e: OSError) -> WriteError:
    import errno

    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.ENOTDIR: "a file stands where a folder is needed", errno.EEXIST: "a file stands where a folder "
           "is needed"}.get(e.errno, e.strerror or str(e))
    err = WriteError(f"cannot write {path}: {why}; earlier files are intact")
    err.errno = e.errno
    return err


def cache_root() -> Path:
    """visroute's cache directory: ``$VISROUTE_CACHE``, else ``$XDG_CACHE_HOME/visroute``, else ``~/.cache/visroute``."""
    env = os.environ.get("VISROUTE_CACHE")
    if env:
        root = Path(env).expanduser()
        if root.exists() and not root.is_dir():
            raise VisrouteError(f"VISROUTE_CACHE={env} is not a folder")
        return root
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "visroute"


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass  # no /proc: fall back to the set-and-restore below
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems cannot open or fsync a directory, which only costs durability."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. a network filesystem that rejects directory fsync; the file itself is already synced
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a unique temporary file beside ``path``; on a clean exit fsync it and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. ``mode`` is
    ``"wb"`` or ``"w"`` (text, ``encoding`` defaults to UTF-8). Parent directories are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(21, "a folder stands where the file goes")
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name[:60]}-", dir=path.parent)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        f = os.fdopen(fd, mode, **({"encoding": encoding or "utf-8"} if mode == "w" else {}))
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WriteError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        import errno

        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EISDIR, errno.ENOTDIR):
            raise _write_error(path, e) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, ensure_ascii: bool = True,
                      sort_keys: bool = False) -> Path:
    """JSON with ``json.dumps``'s own options, so a caller keeps its existing on-disk format byte for byte."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys))


def atomic_write_parquet(path: str | Path, table: Any, **write_options: Any) -> Path:
    """A pyarrow Table written with ``pyarrow.parquet.write_table`` (same bytes as writing the path directly)."""
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as f:
        pq.write_table(table, f, **write_options)
    return Path(path)


def atomic_write_npz(path: str | Path, **arrays: Any) -> Path:
    """``numpy.savez`` into ``path`` (no extension added; object arrays are refused when read back)."""
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def atomic_write_npy(path: str | Path, array: Any) -> Path:
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return Path(path)


@contextmanager
def file_lock(path: str | Path, timeout: float | None = None, on_wait: Callable[[], None] | None = None,
              poll_s: float = 0.05) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Serialises processes that update the same cache entry, e.g. a read-modify-write of one file or
    a sweep of stale temporary files that must not delete another writer's. The kernel releases the
    lock when the holder dies, so a killed run never leaves a cache locked. ``on_wait`` is called
    once when another process holds the lock (to say what we wait for). ``timeout`` (seconds): raise
    :class:`LockTimeout` instead of waiting longer; None waits as long as it takes.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            _wait_for_lock(fd, path, timeout, poll_s)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _wait_for_lock(fd: int, path: Path, timeout: float | None, poll_s: float) -> None:
    import fcntl

    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeout(f"another process has held {path} for over {timeout:g} s; wait for it to "
                                  "finish, or delete the lock file if no visroute process is running") from None
            time.sleep(poll_s)


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG (parents made, tight bounding box) and close it, so plots never pile up."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
