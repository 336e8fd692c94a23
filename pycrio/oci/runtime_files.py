"""The files of one container under ``<runroot>/conmon/<id>`` (conmon's persist dir)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

RECORD_VERSION = 1


class ContainerFiles:
    """Paths in a container's persist dir and pycrio's record (``pycrio.json``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.conmon_pidfile = directory / "conmon.pid"
        self.pidfile = directory / "pidfile"
        self.record = directory / "pycrio.json"

    def load(self) -> dict[str, Any] | None:
        """The record, or None if there is none (or it is unreadable)."""
        try:
            data = json.loads(self.record.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
            return None
        return data

    def save(self, rec: dict[str, Any]) -> None:
        """Write the record atomically (temp file + rename)."""
        rec["version"] = RECORD_VERSION
        tmp = self.record.with_name(self.record.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(rec, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.record)

    def read_conmon_pid(self) -> int | None:
        return _read_pid(self.conmon_pidfile)

    def read_pid(self) -> int | None:
        return _read_pid(self.pidfile)


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip())
        if pid > 0:
            return pid
    return None
