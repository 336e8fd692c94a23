"""Shared pytest fixtures.

Fixtures for registries and test images live in tests/support/fixtures.py and
are re-exported here so every test module can use them by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import PycrioDaemon

# Registries and test images (session-scoped where they are expensive), and the
# metadata store / layer store fixtures of the storage tests.
pytest_plugins = ["tests.support.fixtures", "tests.unit.test_storage_support"]


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Path:
    return tmp_path / "pycrio"


@pytest.fixture
def daemon(daemon_dir: Path) -> Iterator[PycrioDaemon]:
    """A running pycrio on a private root and socket, stopped after the test."""
    d = PycrioDaemon(daemon_dir)
    try:
        d.start()
        yield d
    finally:
        d.stop()
