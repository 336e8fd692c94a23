"""The CRI container log format: parsing, formatting, splitting, tailing.

One record per line::

    <RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\\n

``F`` marks a full line: the line's own newline is the record's newline.
``P`` marks a fragment (the writer split a long line, or the stream ended
without a newline): the record's newline was added by the writer and is not
part of the output. conmon writes local time with a numeric offset
(``2024-05-01T10:00:00.123456789+02:00``); containerd writes ``Z``. Both parse.

Everything here is I/O-free except :func:`tail_offset`, which reads a file
backwards (run it in an executor for big files).
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

STDOUT = "stdout"
STDERR = "stderr"
PARTIAL = b"P"
FULL = b"F"

# Longest record the incremental reader buffers while waiting for its newline.
# conmon writes at most 8 KiB of content per record; containerd 16 KiB.
MAX_RECORD = 1 << 20

_TS = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


class CRILogError(ValueError):
    """A line that is not a CRI log record."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One record. ``content`` never includes the record's terminating newline."""

    timestamp: bytes
    stream: str
    partial: bool
    content: bytes

    @property
    def data(self) -> bytes:
        """The bytes the container wrote: a full line gets its newline back."""
        return self.content if self.partial else self.content + b"\n"

    @property
    def time_ns(self) -> int:
        return parse_timestamp(self.timestamp)


def parse_timestamp(ts: bytes | str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (any fraction, Z or offset)."""
    raw = ts.encode() if isinstance(ts, str) else ts
    m = _TS.match(raw)
    if m is None:
        raise CRILogError(f"bad timestamp {raw[:64]!r}")
    year, mon, day, hh, mm, ss = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    frac = m.group(7) or b""
    nanos = int(frac.ljust(9, b"0")) if frac else 0
    try:
        secs = calendar.timegm((year, mon, day, hh, mm, ss, 0, 0, 0))
    except (ValueError, OverflowError) as exc:
        raise CRILogError(f"bad timestamp {raw[:64]!r}") from exc
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        secs -= offset if m.group(9) == b"+" else -offset
    return secs * 1_000_000_000 + nanos


def format_timestamp(ns: int) -> bytes:
    """UTC RFC3339Nano with nine fraction digits, e.g. ``2024-05-01T08:00:00.000000001Z``."""
    secs, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % nanos


def format_record(stream: str, content: bytes, *, partial: bool = False, ts_ns: int | None = None) -> bytes:
    """One record line (with its newline). ``content`` must not contain a newline."""
    if stream not in (STDOUT, STDERR):
        raise ValueError(f"bad stream {stream!r}")
    if b"\n" in content:
        raise ValueError("content of one record cannot contain a newline")
    ts = format_timestamp(time.time_ns() if ts_ns is None else ts_ns)
    return b"%s %s %s %s\n" % (ts, stream.encode(), PARTIAL if partial else FULL, content)


def parse_record(line: bytes) -> LogRecord:
    """Parse one record; a trailing newline, if present, is dropped."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise CRILogError(f"not a CRI log record: {line[:80]!r}")
    ts, stream_b, tag = parts[0], parts[1], parts[2]
    content = parts[3] if len(parts) == 4 else b""
    if stream_b == b"stdout":
        stream = STDOUT
    elif stream_b == b"stderr":
        stream = STDERR
    else:
        raise CRILogError(f"unknown stream {stream_b[:16]!r}")
    # Tags may carry more fields after ':' (CRI LogTagDelimiter); the first is P or F.
    kind = tag.split(b":", 1)[0]
    if kind not in (PARTIAL, FULL):
        raise CRILogError(f"unknown tag {tag[:16]!r}")
    if _TS.match(ts) is None:
        raise CRILogError(f"bad timestamp {ts[:64]!r}")
    return LogRecord(ts, stream, kind == PARTIAL, content)


def iter_records(data: bytes, *, strict: bool = False) -> Iterator[LogRecord]:
    """Records of a whole buffer; malformed lines are skipped unless ``strict``.

    Records end at ``\n`` only: a ``\r`` inside a record is content.
    """
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            yield parse_record(line)
        except CRILogError:
            if strict:
                raise


def split_streams(data: bytes) -> tuple[bytes, bytes]:
    """The stdout and stderr bytes a container wrote, rebuilt from its log."""
    out: list[bytes] = []
    err: list[bytes] = []
    for rec in iter_records(data):
        (out if rec.stream == STDOUT else err).append(rec.data)
    return b"".join(out), b"".join(err)


class LogReader:
    """Incremental parser for a growing log (``logs -f``): feed bytes, get records.

    An unterminated last line is kept until its newline arrives. A line longer
    than ``max_record`` is dropped (counted in ``skipped``), as are malformed lines.
    """

    def __init__(self, max_record: int = MAX_RECORD) -> None:
        self.max_record = max_record
        self.skipped = 0
        self._buf = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes held back waiting for a newline."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[LogRecord]:
        records: list[LogRecord] = []
        start = 0
        # Bounded by the number of newlines in chunk.
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            piece = chunk[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                self._buf.clear()
                continue
            if self._buf:
                self._buf += piece
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = piece
            if not line:
                continue
            try:
                records.append(parse_record(line))
            except CRILogError:
                self.skipped += 1
        rest = chunk[start:]
        if rest and not self._discarding:
            self._buf += rest
            if len(self._buf) > self.max_record:
                self._buf.clear()
                self._discarding = True
                self.skipped += 1
        return records


def tail_offset(path: str | os.PathLike[str], n: int, block: int = 65536) -> int:
    """Byte offset where the last ``n`` records of the file start (0: whole file).

    Reads backwards in blocks, so the cost follows ``n``, not the file size.
    """
    if n < 0:
        return 0
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if n == 0:
            return size
        pos = size
        # A file ending in "\n" has that newline as the end of the last record.
        newlines = 0
        first = True
        # Bounded: pos strictly decreases to 0.
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step)
            end = len(buf)
            if first:
                first = False
                if buf.endswith(b"\n"):
                    end -= 1
            # Scan this block from its end for newlines.
            while True:
                i = buf.rfind(b"\n", 0, end)
                if i < 0:
                    break
                newlines += 1
                if newlines == n:
                    return pos + i + 1
                end = i
        return 0
