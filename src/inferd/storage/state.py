"""The state store: one SQLite file under INFERD_HOME that remembers what must survive a restart.

It holds every launch with its parameters and wanted state, each model's status history, and the
model processes started (so a later server can end the orphans of a killed one). It is written on
lifecycle changes only, never on a request's path.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

# Each migration brings the schema from version N to N+1; append, never edit.
_MIGRATIONS: list[str] = [
    """
        CREATE TABLE launches (
            uid TEXT PRIMARY KEY,
            request TEXT NOT NULL,
            wanted TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            load_seconds REAL,
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            uid TEXT NOT NULL,
            time REAL NOT NULL,
            status TEXT NOT NULL,
            message TEXT
        );
        CREATE INDEX events_uid ON events(uid, time);
        CREATE TABLE processes (
            pid INTEGER PRIMARY KEY,
            uid TEXT NOT NULL,
            replica INTEGER NOT NULL,
            started REAL NOT NULL
        );
        CREATE TABLE registrations (
            model_type TEXT NOT NULL,
            model_name TEXT NOT NULL,
            family TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (model_type, model_name)
        );
    """,
    """
        CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            admin INTEGER NOT NULL,
            models TEXT,
            created REAL NOT NULL,
            expires REAL
        );
    """,
]

SCHEMA_VERSION = len(_MIGRATIONS)
KEY_NAME = r"[\w.\-]{1,64}"  # what an API key may be called


class StateStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the state store is at schema {version}, newer than this inferd "
                f"({SCHEMA_VERSION}): upgrade inferd"
            )
        for number in range(version, SCHEMA_VERSION):
            # One transaction per step: a crash mid-migration leaves the previous version.
            self._db.executescript(
                f"BEGIN; {_MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;"
            )

    def _write(self, sql: str, *args: Any) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # API keys ---------------------------------------------------------------------------
    # Only a hash of each key is kept: the key itself is shown once, when it is made.

    def create_key(
        self, name: str, admin: bool, models: list[str] | None, expires: float | None
    ) -> str:
        if not re.fullmatch(KEY_NAME, name):
            raise ValueError("a key's name is 1-64 letters, digits, '_', '.' or '-'")
        secret = "inferd-" + secrets.token_urlsafe(32)
        try:
            self._write(
                "INSERT INTO api_keys (name, hash, admin, models, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                name,
                key_hash(secret),
                int(admin),
                json.dumps(models) if models is not None else None,
                time.time(),
                expires,
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"a key named {name!r} exists already") from None
        return secret

    def api_keys(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT name, admin, models, created, expires FROM api_keys ORDER BY created"
        ).fetchall()
        return [_key_row(*row) for row in rows]

    def key_for(self, secret: str) -> dict[str, Any] | None:
        """The key `secret` is, unless unknown or expired."""
        row = self._db.execute(
            "SELECT name, admin, models, created, expires FROM api_keys WHERE hash=?",
            (key_hash(secret),),
        ).fetchone()
        if row is None:
            return None
        key = _key_row(*row)
        if key["expires"] is not None and key["expires"] < time.time():
            return None
        return key

    def revoke_key(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM api_keys WHERE name=?", (name,)).rowcount > 0

    # launches --------------------------------------------------------------------------

    def save_launch(self, uid: str, request: dict[str, Any], status: str) -> None:
        now = time.time()
        self._write(
            "INSERT INTO launches (uid, request, wanted, status, created, updated) "
            "VALUES (?, ?, 'running', ?, ?, ?) "
            "ON CONFLICT(uid) DO UPDATE SET request=excluded.request, wanted='running', "
            "status=excluded.status, error=NULL, updated=excluded.updated",
            uid,
            json.dumps(request),
            status,
            now,
            now,
        )
        self.add_event(uid, status, "launch requested")

    def update_request(self, uid: str, request: dict[str, Any]) -> None:
        """Change what a restore would launch (e.g. the replica count), nothing else."""
        self._write(
            "UPDATE launches SET request=?, updated=? WHERE uid=?",
            json.dumps(request),
            time.time(),
            uid,
        )

    def set_status(
        self,
        uid: str,
        status: str,
        message: str | None = None,
        *,
        wanted: str | None = None,
        load_seconds: float | None = None,
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE launches SET status=?, error=?, updated=?, "
                "wanted=COALESCE(?, wanted), load_seconds=COALESCE(?, load_seconds) WHERE uid=?",
                (
                    status,
                    message if status == "failed" else None,
                    time.time(),
                    wanted,
                    load_seconds,
                    uid,
                ),
            )
            self._db.execute(
                "INSERT INTO events (uid, time, status, message) VALUES (?, ?, ?, ?)",
                (uid, time.time(), status, message),
            )

    def add_event(self, uid: str, status: str, message: str | None = None) -> None:
        self._write(
            "INSERT INTO events (uid, time, status, message) VALUES (?, ?, ?, ?)",
            uid,
            time.time(),
            status,
            message,
        )

    def forget_launch(self, uid: str) -> None:
        self._write("DELETE FROM launches WHERE uid=?", uid)

    def launches(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT uid, request, wanted, status, error, load_seconds FROM launches "
                "ORDER BY created"
            ).fetchall()
        return [
            {
                "uid": uid,
                "request": json.loads(request),
                "wanted": wanted,
                "status": status,
                "error": error,
                "load_seconds": load_seconds,
            }
            for uid, request, wanted, status, error, load_seconds in rows
        ]

    def load_seconds(self, uid: str) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT load_seconds FROM launches WHERE uid=?", (uid,)
            ).fetchone()
        return None if row is None else row[0]

    def events(self, uid: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT time, status, message FROM events WHERE uid=? ORDER BY id DESC LIMIT ?",
                (uid, limit),
            ).fetchall()
        return [{"time": t, "status": s, "message": m} for t, s, m in reversed(rows)]

    # registrations ---------------------------------------------------------------------

    def save_registration(self, model_type: str, model_name: str, family: dict[str, Any]) -> None:
        self._write(
            "INSERT OR REPLACE INTO registrations (model_type, model_name, family, created) "
            "VALUES (?, ?, ?, ?)",
            model_type,
            model_name,
            json.dumps(family),
            time.time(),
        )

    def remove_registration(self, model_type: str, model_name: str) -> None:
        self._write(
            "DELETE FROM registrations WHERE model_type=? AND model_name=?", model_type, model_name
        )

    def registrations(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT family FROM registrations ORDER BY created").fetchall()
        return [json.loads(row[0]) for row in rows]

    # processes -------------------------------------------------------------------------

    def add_process(self, pid: int, uid: str, replica: int) -> None:
        self._write(
            "INSERT OR REPLACE INTO processes (pid, uid, replica, started) VALUES (?, ?, ?, ?)",
            pid,
            uid,
            replica,
            time.time(),
        )

    def remove_process(self, pid: int) -> None:
        self._write("DELETE FROM processes WHERE pid=?", pid)

    def take_processes(self) -> list[int]:
        """The pids recorded by an earlier server, forgetting them."""
        with self._lock:
            pids = [row[0] for row in self._db.execute("SELECT pid FROM processes")]
            self._db.execute("DELETE FROM processes")
        return pids

    def close(self) -> None:
        with self._lock:
            self._db.close()


def key_hash(secret: str) -> str:
    # Keys are 256 random bits, so a plain hash cannot be searched backwards.
    return hashlib.sha256(secret.encode()).hexdigest()


def _key_row(
    name: str, admin: int, models: str | None, created: float, expires: float | None
) -> dict[str, Any]:
    return {
        "name": name,
        "admin": bool(admin),
        "models": json.loads(models) if models else None,
        "created": created,
        "expires": expires,
    }
