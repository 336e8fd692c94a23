"""``pycrioctl logs``: read a container's CRI log file, as crictl does, on the client side.

The log path comes from ContainerStatus. ``--tail`` seeks to the last N
records, ``--since`` skips older records, ``-t`` prefixes each record with its
timestamp, ``-f`` keeps reading as the file grows (inotify on its directory)
and follows it across rotation or reopening, until the container is no
longer running.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import select
import sys
import time
from typing import IO, Any

import grpc

from pycrio import inotify as ino
from pycrio.api import api_pb2 as pb
from pycrio.cli.client import Client
from pycrio.cli.ctl_common import CtlError, command, deadline, doing, parse_duration
from pycrio.oci import crilog

READ_CHUNK = 1 << 16
# How long a follower waits for the file to change before asking whether the container still runs.
IDLE_CHECK = 0.5
WATCH_MASK = ino.IN_MODIFY | ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_MOVED_FROM | ino.IN_DELETE

_TS_PARTS = re.compile(rb"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$")
_ABS_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)(?:[Tt ](\d\d)(?::(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?)?)?([Zz]|[+-]\d\d:?\d\d)?$"
)


def register(sub: Any) -> None:
    p = sub.add_parser("logs", help="fetch the logs of a container")
    p.add_argument("id", metavar="CONTAINER-ID")
    p.add_argument("-f", "--follow", action="store_true", help="follow log output")
    p.add_argument("-p", "--previous", action="store_true", help="logs of the previous attempt")
    p.add_argument("-r", "--reopen", action="store_true", help="reopen the container's log first")
    p.add_argument("--tail", type=int, default=None, help="lines to show from the end (default all)")
    p.add_argument("--limit-bytes", type=int, default=-1, help="maximum bytes of logs to return")
    p.add_argument("--since", default="", help="since a time (2013-01-02T13:23:37) or a duration (42m)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("-s", "--stream", default="", help="only stdout or stderr (default both)")
    p.set_defaults(func=logs)


def parse_since(value: str, now: float | None = None) -> int | None:
    """``--since``: a duration back from now, an RFC 3339 time (zone optional: local) or Unix seconds.
    Returns nanoseconds since the epoch."""
    if not value:
        return None
    now = time.time() if now is None else now
    with_unit = re.search(r"[a-zµμ]", value) is not None and "T" not in value and "-" not in value[1:]
    if with_unit:
        try:
            return int((now - parse_duration(value)) * 1e9)
        except ValueError:
            pass
    if re.fullmatch(r"\d+(\.\d{1,9})?", value):
        secs, _, frac = value.partition(".")
        return int(secs) * 1_000_000_000 + int(frac.ljust(9, "0") or 0)
    m = _ABS_TIME.match(value)
    if m is None:
        raise CtlError(
            f"invalid --since {value!r}: use a duration (42m), a time (2013-01-02T13:23:37) or seconds"
        )
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.group(1, 2, 3, 4, 5, 6))
    nanos = int((m.group(7) or "").ljust(9, "0") or 0)
    zone = m.group(8)
    try:
        when = dt.datetime(y, mo, d, h, mi, s)
    except ValueError as exc:
        raise CtlError(f"invalid --since {value!r}: {exc}") from None
    if zone is None:
        when = when.astimezone()  # no zone: local time, as docker and crictl read it
    elif zone in ("Z", "z"):
        when = when.replace(tzinfo=dt.UTC)
    else:
        digits = zone.replace(":", "")
        offset = dt.timedelta(hours=int(digits[1:3]), minutes=int(digits[3:5]))
        when = when.replace(tzinfo=dt.timezone(offset if digits[0] == "+" else -offset))
    return int(when.timestamp()) * 1_000_000_000 + nanos


def format_timestamp(raw: bytes) -> bytes:
    """A record's timestamp as Go's RFC3339Nano prints it: fraction without trailing
    zeros, ``Z`` for a zero offset, any other offset kept."""
    m = _TS_PARTS.match(raw)
    if m is None:
        return raw
    base, frac, zone = m.group(1), (m.group(2) or b"").rstrip(b"0"), m.group(3)
    if zone in (b"z", b"+00:00", b"-00:00"):
        zone = b"Z"
    return base + (b"." + frac if frac else b"") + zone


class Writer:
    """Writes records to stdout/stderr with the chosen options; counts the byte limit."""

    def __init__(self, args: argparse.Namespace, since_ns: int | None) -> None:
        self.timestamps = args.timestamps
        self.stream = args.stream
        self.since_ns = since_ns
        self.left = args.limit_bytes if args.limit_bytes >= 0 else -1
        self.out = {crilog.STDOUT: sys.stdout.buffer, crilog.STDERR: sys.stderr.buffer}

    @property
    def full(self) -> bool:
        return self.left == 0

    def write(self, records: list[crilog.LogRecord]) -> None:
        touched: set[IO[bytes]] = set()
        for rec in records:
            if self.full:
                break
            if self.stream and rec.stream != self.stream:
                continue
            if self.since_ns is not None:
                try:
                    if rec.time_ns < self.since_ns:
                        continue
                except crilog.CRILogError:
                    continue
            data = rec.data
            if self.timestamps:
                data = format_timestamp(rec.timestamp) + b" " + data
            if self.left >= 0:
                data = data[: self.left]
                self.left -= len(data)
            out = self.out[rec.stream]
            out.write(data)
            touched.add(out)
        for out in touched:
            out.flush()


def _log_path(client: Client, args: argparse.Namespace) -> tuple[str, str]:
    with doing("getting container status"):
        status = client.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=args.id), timeout=deadline(args)
        ).status
    path: str = status.log_path
    if not path:
        raise CtlError("the container has not set log path")
    if args.previous:
        attempt = status.metadata.attempt
        if attempt == 0:
            raise CtlError(f"previous terminated container {status.metadata.name} not found")
        slash, dot = path.rfind("/"), path.rfind(".")
        path = path[: slash + 1] + str(attempt - 1) + (path[dot:] if dot > slash else "")
    return path, status.id


def _running(client: Client, args: argparse.Namespace, cid: str) -> bool:
    try:
        req = pb.ContainerStatusRequest(container_id=cid)
        st = client.runtime.ContainerStatus(req, timeout=deadline(args))
    except grpc.RpcError:
        return False  # removed meanwhile
    return bool(st.status.state == pb.CONTAINER_RUNNING)


def _drain(f: IO[bytes], reader: crilog.LogReader, writer: Writer) -> bool:
    """Write every complete record up to the end of the file; True if anything was read."""
    got = False
    # Bounded by the file's size: every pass reads a chunk or stops.
    while not writer.full:
        chunk = f.read(READ_CHUNK)
        if not chunk:
            break
        got = True
        writer.write(reader.feed(chunk))
    return got


def _same_file(f: IO[bytes], path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True  # nothing new to switch to yet
    cur = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)


def _follow(client: Client, args: argparse.Namespace, cid: str, path: str, f: IO[bytes],
            reader: crilog.LogReader, writer: Writer) -> IO[bytes]:
    with ino.Inotify() as watch:
        watch.add_watch(os.path.dirname(path) or ".", WATCH_MASK)
        # Runs until the container stops (checked whenever the file stays quiet) or the limit is hit.
        while not writer.full:
            if _drain(f, reader, writer):
                continue
            if not _same_file(f, path):
                # Rotated or reopened: finish the old file, carry on with the new one.
                _drain(f, reader, writer)
                f.close()
                f = open(path, "rb")  # noqa: SIM115 - handed back to the caller
                reader = crilog.LogReader()
                continue
            ready, _, _ = select.select([watch.fd], [], [], IDLE_CHECK)
            if ready:
                watch.read()
                continue
            if not _running(client, args, cid):
                _drain(f, reader, writer)
                break
    return f


@command
def logs(client: Client, args: argparse.Namespace) -> int:
    if args.stream not in ("", crilog.STDOUT, crilog.STDERR):
        raise CtlError(f'invalid stream "{args.stream}", must be "stdout" or "stderr"')
    if args.tail is not None and args.stream:
        raise CtlError("--tail and --stream are mutually exclusive")
    since_ns = parse_since(args.since)
    if args.reopen:
        with doing("reopen container logs"):
            client.runtime.ReopenContainerLog(
                pb.ReopenContainerLogRequest(container_id=args.id), timeout=deadline(args)
            )
        print("Container logs reopened", file=sys.stderr)
    path, cid = _log_path(client, args)
    try:
        f: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed below (possibly after a switch)
    except OSError as exc:
        raise CtlError(f"failed to open log file {path!r}: {exc.strerror}") from None
    try:
        if args.tail is not None and args.tail >= 0:
            f.seek(crilog.tail_offset(path, args.tail))
        reader = crilog.LogReader()
        writer = Writer(args, since_ns)
        _drain(f, reader, writer)
        if args.follow:
            try:
                f = _follow(client, args, cid, path, f, reader, writer)
            except KeyboardInterrupt:
                pass  # Ctrl-C ends following quietly, as with crictl
    finally:
        f.close()
    return 0
