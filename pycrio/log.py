"""Structured logging to stderr: logfmt-style text or one JSON object per line.

Call sites pass structured fields with ``extra={"fields": {...}}`` or through
:func:`kv`; both formatters print them as separate keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

_LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def kv(**fields: Any) -> dict[str, Any]:
    """``log.info("msg", extra=kv(id=...))`` — the structured fields of one line."""
    return {"fields": fields}


def _timestamp(record: logging.LogRecord) -> str:
    secs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{secs}.{int(record.msecs * 1000):06d}Z"


class TextFormatter(logging.Formatter):
    """``time=... level=info logger=... msg="..." key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"time={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            parts.extend(f"{k}={_quote(str(v))}" for k, v in fields.items())
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    """One JSON object per line, fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(k, v if isinstance(v, int | float | bool | type(None)) else str(v))
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "-_./:@+,=" for c in value):
        return value
    return json.dumps(value)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Route the ``pycrio`` loggers to stderr with the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("pycrio")
    root.handlers[:] = [handler]
    root.propagate = False
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger("pycrio").setLevel(_LEVELS.get(level, logging.INFO))
