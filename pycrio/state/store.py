"""The metadata store: one SQLite database in WAL mode under ``root``.

Every component that keeps state (images, layers, pods, containers) declares
a :class:`Schema` — a name and an ordered list of migrations — and registers
it when it is constructed. The store remembers, per schema, how many
migrations have been applied, and applies the rest inside one transaction
each, so a crash at any point leaves either the old or the new version.

Writes go through :meth:`MetadataStore.transaction`; SQLite's WAL journal
makes every committed transaction durable against a daemon crash, and a
transaction that did not commit leaves nothing behind.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio.errors import Internal

# A migration is SQL text: statements separated by ';', run in order.
Migration = str


@dataclass(frozen=True)
class Schema:
    """The tables of one component, as an ordered list of migrations."""

    name: str
    migrations: Sequence[Migration]


class MetadataStore:
    """A thin, typed wrapper around one SQLite connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop and executor threads;
        # the lock serialises access (SQLite would anyway).
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._depth = 0
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: always consistent, durable against a
            # process crash; only an OS crash can drop the last commits.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )

    # -- schema ---------------------------------------------------------
    def register(self, schema: Schema) -> None:
        """Apply the migrations of ``schema`` that this database lacks."""
        with self._lock:
            row = self._conn.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (schema.name,)
            ).fetchone()
            current = int(row[0]) if row else 0
            if current > len(schema.migrations):
                raise Internal(
                    f"metadata store {self.path} has schema {schema.name!r} at version {current}, "
                    f"newer than this pycrio knows ({len(schema.migrations)})"
                )
            for version in range(current + 1, len(schema.migrations) + 1):
                with self.transaction() as conn:
                    for statement in _split_sql(schema.migrations[version - 1]):
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_versions(component, version) VALUES(?, ?) "
                        "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                        (schema.name, version),
                    )

    def version(self, component: str) -> int:
        row = self.query_one("SELECT version FROM schema_versions WHERE component = ?", (component,))
        return int(row[0]) if row else 0

    # -- access ---------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._depth = 0
                self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; returns rows changed."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
            return row

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (our migrations hold no ';' in literals)."""
    return [part.strip() for part in script.split(";") if part.strip()]
