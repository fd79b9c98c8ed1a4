"""Stored responses of the Responses API, so `previous_response_id` continues a conversation
(after a restart too) and `GET /v1/responses/{id}` reads one back.

They live in their own SQLite file beside the state store: they are written on a request's
path, which the state store never is, and they are kept 30 days (OpenAI's own retention).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

Json = dict[str, Any]

KEEP_SECONDS = 30 * 86400


class ResponseStore:
    def __init__(self, path: Path, keep_seconds: float = KEEP_SECONDS):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                """CREATE TABLE IF NOT EXISTS responses (
                    id TEXT PRIMARY KEY,
                    created REAL NOT NULL,
                    previous TEXT,
                    response TEXT NOT NULL,
                    input_items TEXT NOT NULL
                )"""
            )
            self._db.execute(
                "DELETE FROM responses WHERE created < ?", (time.time() - keep_seconds,)
            )

    def save(self, response: Json, input_items: list[Json]) -> None:
        """A finished response with the items its request added to the conversation."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (
                    response["id"],
                    time.time(),
                    response.get("previous_response_id"),
                    json.dumps(response),
                    json.dumps(input_items),
                ),
            )

    def get(self, response_id: str) -> tuple[Json, list[Json]] | None:
        """The response and its request's input items, if kept."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, input_items FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def conversation(self, response_id: str) -> list[Json] | None:
        """Every item of the conversation up to and including `response_id`'s output, oldest
        first: each earlier request's input items, then what it answered."""
        turns: list[list[Json]] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None and current not in seen:
            seen.add(current)
            kept = self.get(current)
            if kept is None:
                if current == response_id:
                    return None
                break  # an older turn expired or was deleted: the conversation starts after it
            response, items = kept
            turns.append([*items, *response.get("output", [])])
            current = response.get("previous_response_id")
        return [item for turn in reversed(turns) for item in turn]

    def close(self) -> None:
        with self._lock:
            self._db.close()
