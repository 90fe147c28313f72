"""Stored responses (the Responses API's ``store``): bounded, per tenant, on disk when there is one.

A stored response keeps what a later turn needs to continue it exactly:
the token ids its model saw and wrote (``transcript``: the prompt's ids,
then the sampled reply's), the conversation as messages (for a fallback
render and for ``input_items``), and the cache key of the row its prompt
was saved as (``finish_key``, a restore hint). The response object itself
is kept as the JSON the client got, so ``GET`` returns exactly that.

Bounded by count and by age (the oldest go first; an expired one is a 404),
scoped by tenant: a response is found only with the ``cache_salt`` it was
created under, so another tenant's id is a 404 like an unknown one. With a
disk directory (the KV cache's disk tier) it lives in a SQLite file there
and survives a restart; otherwise in memory.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAX_COUNT = 10_000
DEFAULT_MAX_AGE = 30 * 24 * 3600.0  # OpenAI keeps stored responses 30 days
_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    tenant TEXT NOT NULL, id TEXT NOT NULL, created REAL NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (tenant, id))"""


@dataclass
class StoredResponse:
    id: str
    created_at: float
    # The response object as the client got it (JSON-ready).
    response: dict[str, Any]
    # The input items with their ids, in order (GET .../input_items).
    input_items: list[dict[str, Any]]
    # The conversation as chat messages (this turn's and every earlier one's), and the reply
    # as an assistant message: what a fallback render of the next turn starts from.
    messages: list[dict[str, Any]]
    instructions: str | None
    # Token ids of the prompt, then the sampled reply; and the prompt's row in the KV cache.
    transcript: list[int] = field(default_factory=list)
    finish_key: str | None = None
    model: str = ""
    # Media in the conversation: the next turn renders it again rather than continuing ids.
    has_media: bool = False


class ResponseStore:
    """Thread-safe; ``directory`` None keeps responses in memory only."""

    def __init__(self, directory: str | Path | None = None, *, max_count: int = DEFAULT_MAX_COUNT,
                 max_age: float = DEFAULT_MAX_AGE) -> None:
        if max_count < 1 or max_age <= 0:
            raise ValueError("a response store needs max_count >= 1 and max_age > 0")
        self.max_count, self.max_age = max_count, max_age
        self._mu = threading.Lock()
        self._memory: OrderedDict[tuple[str, str], StoredResponse] = OrderedDict()
        self._db: sqlite3.Connection | None = None
        if directory is not None:
            path = Path(directory)
            path.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path / "responses.sqlite3", check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    @property
    def persistent(self) -> bool:
        return self._db is not None

    def put(self, tenant: str | None, stored: StoredResponse) -> None:
        key = (tenant or "", stored.id)
        with self._mu:
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                                 (key[0], key[1], stored.created_at, json.dumps(asdict(stored))))
                self._trim_db()
            else:
                self._memory[key] = stored
                self._memory.move_to_end(key)
                while len(self._memory) > self.max_count:
                    self._memory.popitem(last=False)

    def get(self, tenant: str | None, response_id: str) -> StoredResponse | None:
        key = (tenant or "", response_id)
        with self._mu:
            if self._db is not None:
                row = self._db.execute("SELECT body FROM responses WHERE tenant = ? AND id = ?",
                                       key).fetchone()
                stored = StoredResponse(**json.loads(row[0])) if row else None
            else:
                stored = self._memory.get(key)
            if stored is not None and self._expired(stored):
                self._delete(key)
                return None
            return stored

    def delete(self, tenant: str | None, response_id: str) -> bool:
        with self._mu:
            return self._delete((tenant or "", response_id))

    def __len__(self) -> int:
        with self._mu:
            if self._db is not None:
                return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])
            return len(self._memory)

    def close(self) -> None:
        with self._mu:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _expired(self, stored: StoredResponse) -> bool:
        return time.time() - stored.created_at > self.max_age

    def _delete(self, key: tuple[str, str]) -> bool:
        if self._db is not None:
            return self._db.execute("DELETE FROM responses WHERE tenant = ? AND id = ?", key).rowcount > 0
        return self._memory.pop(key, None) is not None

    def _trim_db(self) -> None:
        """Expired rows, then the oldest beyond ``max_count`` (caller holds the lock)."""
        assert self._db is not None
        self._db.execute("DELETE FROM responses WHERE created < ?", (time.time() - self.max_age,))
        self._db.execute(
            "DELETE FROM responses WHERE rowid IN (SELECT rowid FROM responses ORDER BY created DESC "
            "LIMIT -1 OFFSET ?)", (self.max_count,))
