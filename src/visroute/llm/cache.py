"""SQLite response cache: a request already answered costs nothing on re-run, and says so.

Keyed by sha256 of (model, messages with images replaced by their content hash, generation
parameters). Each answer is committed as it arrives, so a killed run loses at most the requests in
flight. Only usable answers are stored: an empty text is refused on write and ignored on read, so a
failed call can never come back later as a valid, free answer.

When writing fails (disk full, SQLite full, a read-only file), the answers already committed stay, the
failure is logged once with how many were saved, and the run goes on with answers that are used but not
saved (``saved`` / ``unsaved`` / ``write_error`` say what happened).
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
from pathlib import Path

from visroute.errors import VisrouteError
from visroute.io import cache_root
from visroute.log import get_logger

log = get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    latency_s REAL,
    created REAL DEFAULT (julianday('now')),
    mean_logprob REAL
)
"""
#: added after the first release: a cache written before it gains the column (NULL: not reported) when opened
ADDED_COLUMNS = {"mean_logprob": "REAL"}


class ResponseCacheError(VisrouteError):
    """The response cache file cannot be used at all (not a database, not readable)."""


def request_key(model: str, messages: list[dict], params: dict) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_root() / "responses.sqlite"
        self._lock = threading.Lock()
        self.saved = 0  # answers committed by this process
        self.unsaved = 0  # answers this process could not commit (see write_error)
        self.write_error: str | None = None
        self.read_only = False
        self._old_columns: set[str] = set()  # added columns a read-only cache of an older version lacks
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
            for name, kind in ADDED_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
            conn.commit()
            return conn
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "malformed" in str(e):
                raise ResponseCacheError(f"the response cache {self.path} is not a usable SQLite database ({e}); "
                                         "move it away to start a new one") from None
            return self._open_read_only(e)
        except OSError as e:
            return self._open_read_only(e)

    def _open_read_only(self, why: BaseException) -> sqlite3.Connection:
        """A cache that cannot be written is still worth reading: its answers are free."""
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
            conn.execute("SELECT COUNT(*) FROM responses").fetchone()
        except (sqlite3.Error, OSError):
            raise ResponseCacheError(f"cannot open the response cache {self.path} ({why}); set VISROUTE_CACHE "
                                     "to a writable directory") from None
        self.read_only = True
        self.write_error = str(why)
        self._old_columns = set(ADDED_COLUMNS) - {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
        log.warning("the response cache %s is read-only (%s): cached answers are used, new ones are not saved",
                    self.path, why)
        return conn

    def get(self, key: str) -> dict | None:
        logprob = "NULL" if "mean_logprob" in self._old_columns else "mean_logprob"  # a read-only cache of before
        with self._lock:
            try:
                row = self._conn.execute(f"SELECT text, input_tokens, output_tokens, latency_s, {logprob} FROM responses "
                                         "WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as e:
                log.debug("response cache read failed: %s", e)
                return None  # a cache that cannot be read is a miss, never a wrong answer
        if row is None or not isinstance(row[0], str) or not row[0].strip():
            return None  # an empty answer stored by an older version is not an answer
        lp = row[4] if isinstance(row[4], float) and math.isfinite(row[4]) and row[4] <= 0 else None  # range-checked
        return {"text": row[0], "input_tokens": row[1], "output_tokens": row[2], "latency_s": row[3], "mean_logprob": lp}

    def put(self, key: str, model: str, text: str, input_tokens: int | None, output_tokens: int | None,
            latency_s: float | None, mean_logprob: float | None = None) -> bool:
        """Commit one answer; False (and counted in ``unsaved``) when it could not be stored."""
        if not isinstance(text, str) or not text.strip():
            return False
        with self._lock:
            if self.read_only:
                self._not_saved(None)
                return False
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO responses (key, model, text, input_tokens, output_tokens, latency_s, "
                    "mean_logprob) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, model, text, input_tokens, output_tokens, latency_s, mean_logprob))
                self._conn.commit()
            except sqlite3.Error as e:
                try:
                    self._conn.rollback()
                except sqlite3.Error:
                    pass
                self._not_saved(e)
                return False
            self.saved += 1
            return True

    def _not_saved(self, error: BaseException | None) -> None:
        """Count an answer that could not be stored; the first one says so, the run's end gives the totals."""
        self.unsaved += 1
        if self.unsaved == 1:
            import atexit

            atexit.register(self._report_unsaved)
        if error is not None:
            if self.unsaved == 1:
                log.warning("response cache %s: cannot save answers (%s); the %d answer(s) saved before are kept, "
                            "and this run goes on using new answers without saving them", self.path, error, self.saved)
            self.write_error = str(error)

    def summary(self) -> str | None:
        """One line when some answers could not be saved, else None."""
        if not self.unsaved:
            return None
        return (f"response cache {self.path}: {self.unsaved} answer(s) not saved ({self.write_error}); "
                f"{self.saved} saved by this run")

    def _report_unsaved(self) -> None:
        line = self.summary()
        if line:
            log.warning("%s", line)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
