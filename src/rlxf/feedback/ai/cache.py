"""An on-disk cache of finished judge requests (SQLite in WAL mode, stdlib ``sqlite3``).

Every answer a judge gives is stored the moment it arrives, under a hash of
everything that determines it (:func:`request_key`): the model, the kind of request
and its full parameters, sampling seed included. So a re-run never pays for a
judgement twice, and a crash loses at most the requests in flight. WAL mode lets
readers and the single writer work at once, and each insert is its own committed
transaction; the database survives the process being killed at any point.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def request_key(**parts: Any) -> str:
    """SHA-256 of the parts as canonical JSON (sorted keys), e.g.
    ``request_key(model="m", kind="completions", params={...})``."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """``key -> JSON value`` on disk, safe to share between the threads of one process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.hits = self.misses = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        text = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (key, value) VALUES (?, ?)", (key, text))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def cached_batch(cache: ResponseCache | None, keys: list[str], compute) -> list[Any]:
    """Values for ``keys``: cached ones read back, the rest computed in one call and stored.

    ``compute(indices)`` returns the values of the items at ``indices`` (in that order);
    each is stored as soon as the call returns, so a later crash keeps them.
    """
    if cache is None:
        return compute(list(range(len(keys))))
    out = [cache.get(k) for k in keys]
    missing = [i for i, v in enumerate(out) if v is None]
    if missing:
        for i, value in zip(missing, compute(missing), strict=True):
            cache.put(keys[i], value)
            out[i] = value
    return out
