"""Network interface counters of pod network namespaces.

``/proc/thread-self/net/dev`` shows the namespace of the reading thread, so
one dedicated, long-lived thread enters each pod's pinned namespace file with
setns(2), reads the file, and goes back to the host's namespace before the
next pod. A whole stats request is one job on that thread. No process is
started; no pooled thread ever runs in a foreign namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pycrio.setns import CLONE_NEWNET, setns

log = logging.getLogger("pycrio.stats")



@dataclass(frozen=True, slots=True)
class Interface:
    """Counters of one interface (``/proc/net/dev`` columns)."""

    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(raw: bytes) -> list[Interface]:
    """``/proc/net/dev`` text -> interfaces, in file order (header lines skipped)."""
    out: list[Interface] = []
    for line in raw.splitlines():
        name, sep, rest = line.partition(b":")
        if not sep or b"|" in line:
            continue
        fields = rest.split()
        if len(fields) < 16:
            continue
        try:
            v = [int(x) for x in fields[:16]]
        except ValueError:
            continue
        out.append(
            Interface(name.strip().decode(errors="replace"), v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11])
        )
    return out




class _Broken(Exception):
    """The worker thread could not return to the host namespace."""


def _read_own() -> bytes:
    with open("/proc/thread-self/net/dev", "rb") as f:
        return f.read()


class NetnsReader:
    """Reads ``/proc/net/dev`` inside pinned network namespaces on one dedicated thread."""

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._home: int | None = None
        self._lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pycrio-netns")
            return self._pool

    def _read_batch(self, paths: Sequence[str]) -> dict[str, list[Interface] | None]:
        # Runs on the worker thread: remember its own (host) namespace once.
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        out: dict[str, list[Interface] | None] = {}
        for path in paths:
            try:
                target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                out[path] = None
                continue
            try:
                setns(target, CLONE_NEWNET)
            except OSError:
                out[path] = None
                os.close(target)
                continue
            try:
                raw: bytes | None = _read_own()
            except OSError:
                raw = None
            finally:
                os.close(target)
                try:
                    setns(self._home, CLONE_NEWNET)
                except OSError as exc:
                    raise _Broken(str(exc)) from exc
            out[path] = parse_net_dev(raw) if raw is not None else None
        return out

    async def read(self, paths: Sequence[str]) -> dict[str, list[Interface] | None]:
        """Interfaces of each namespace file (None where it cannot be read)."""
        if not paths:
            return {}
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            return await loop.run_in_executor(pool, self._read_batch, list(paths))
        except _Broken as exc:
            # Retire the thread (it is stuck in a pod's namespace); the next read gets a new one.
            log.error("netns reader could not return to the host namespace; replacing it: %s", exc)
            with self._lock:
                home = None
                if self._pool is pool:
                    self._pool, home, self._home = None, self._home, None
            pool.shutdown(wait=False)
            if home is not None:
                os.close(home)
            return dict.fromkeys(paths)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self._home is not None:
            os.close(self._home)
            self._home = None


def own_interfaces() -> list[Interface]:
    """The calling thread's namespace (the host's, for host-network pods)."""
    try:
        return parse_net_dev(_read_own())
    except OSError:
        return []
