from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pycrio.errors import Internal
from pycrio.state.store import MetadataStore, Schema

SCHEMA_V1 = Schema("things", ["CREATE TABLE things (id TEXT PRIMARY KEY, n INTEGER)"])
SCHEMA_V2 = Schema("things", [*SCHEMA_V1.migrations, "ALTER TABLE things ADD COLUMN note TEXT DEFAULT ''"])


def test_wal_mode_and_migrations(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "db")
    store.register(SCHEMA_V1)
    assert store.query_one("PRAGMA journal_mode")[0] == "wal"
    assert store.version("things") == 1
    store.execute("INSERT INTO things VALUES (?, ?)", ("a", 1))
    store.close()
    # A newer pycrio adds a migration; existing rows survive.
    store = MetadataStore(tmp_path / "db")
    store.register(SCHEMA_V2)
    assert store.version("things") == 2
    row = store.query_one("SELECT id, n, note FROM things")
    assert tuple(row) == ("a", 1, "")
    store.close()


def test_older_pycrio_refuses_newer_schema(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "db")
    store.register(SCHEMA_V2)
    with pytest.raises(Internal, match="newer"):
        store.register(SCHEMA_V1)
    store.close()


def test_failed_migration_leaves_old_version(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "db")
    store.register(SCHEMA_V1)
    broken = Schema("things", [*SCHEMA_V1.migrations, "CREATE TABLE ok (x); THIS IS NOT SQL"])
    with pytest.raises(sqlite3.OperationalError):
        store.register(broken)
    assert store.version("things") == 1
    assert store.query_one("SELECT name FROM sqlite_master WHERE name = 'ok'") is None
    store.close()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "db")
    store.register(SCHEMA_V1)
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO things VALUES ('x', 1)")
        with store.transaction() as inner:  # nested joins the outer one
            inner.execute("INSERT INTO things VALUES ('y', 2)")
        raise RuntimeError("boom")
    assert store.query("SELECT * FROM things") == []
    store.close()


def test_crash_mid_transaction_leaves_store_consistent(tmp_path: Path) -> None:
    db = tmp_path / "db"
    store = MetadataStore(db)
    store.register(SCHEMA_V1)
    store.execute("INSERT INTO things VALUES ('committed', 1)")
    store.close()
    # A child process writes half a transaction and dies without committing.
    code = (
        "import os\n"
        "from pathlib import Path\n"
        "from pycrio.state.store import MetadataStore\n"
        f"s = MetadataStore(Path({str(db)!r}))\n"
        "with s.transaction() as c:\n"
        "    c.execute(\"INSERT INTO things VALUES ('half', 2)\")\n"
        "    c.execute(\"UPDATE things SET n = 99 WHERE id = 'committed'\")\n"
        "    os._exit(9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, env=dict(os.environ))
    assert proc.returncode == 9
    store = MetadataStore(db)
    rows = [tuple(r) for r in store.query("SELECT id, n FROM things ORDER BY id")]
    assert rows == [("committed", 1)]
    assert store.query_one("PRAGMA integrity_check")[0] == "ok"
    store.close()
