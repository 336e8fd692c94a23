"""Transfer plumbing shared by the registry client: errors, retries, stall detection."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable

import aiohttp

from pycrio.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PycrioError,
    Unauthenticated,
    Unavailable,
)
from pycrio.image.manifest import ManifestError

# The part of an error body worth reading.
ERROR_BODY_MAX = 64 * 1024
# Cap of one backoff sleep.
BACKOFF_MAX = 8.0


class Retryable(Exception):
    """A failure worth another attempt (5xx, dropped connection, short body)."""


# Exceptions from aiohttp/ssl that mean "the connection broke", not "the answer was no".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
    ssl.SSLError,
    ConnectionError,
)


# Everything after which another attempt is worth making.
RETRYABLE: tuple[type[BaseException], ...] = (Retryable, *CONNECTION_ERRORS)
# The same, plus an error body that was too big to read.
RETRYABLE_OR_BODY: tuple[type[BaseException], ...] = (ManifestError, *RETRYABLE)


def backoff_delay(base: float, attempt: int) -> float:
    """Exponential backoff: base, 2*base, 4*base ... capped."""
    return float(min(base * (2 ** max(attempt - 1, 0)), BACKOFF_MAX))


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _codes(body: bytes) -> list[tuple[str, str]]:
    """(code, message) pairs of an OCI error body, if it is one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return []
    out: list[tuple[str, str]] = []
    for e in errors[:8]:
        if isinstance(e, dict):
            out.append((str(e.get("code", "")), str(e.get("message", ""))))
    return out


def error_from_response(status: int, body: bytes, what: str, *, had_credentials: bool) -> PycrioError:
    """Turn a registry error answer into one of pycrio's errors, with a clear message."""
    codes = _codes(body)
    names = {c for c, _ in codes}
    detail = "; ".join(f"{c}: {m}" if m else c for c, m in codes)
    if not detail:
        text = body[:200].decode("utf-8", "replace").strip()
        detail = f"HTTP {status}" + (f": {text}" if text else "")
    else:
        detail = f"HTTP {status} {detail}"
    msg = f"{what}: {detail}"
    if "TOOMANYREQUESTS" in names or status == 429:
        return Unavailable(f"{msg} (the registry is rate-limiting pulls; try again later)")
    if "DENIED" in names or status == 403:
        return PermissionDenied(msg)
    if "UNAUTHORIZED" in names or status == 401:
        if had_credentials:
            return Unauthenticated(f"{msg} (the registry refused the credentials)")
        return Unauthenticated(
            f"{msg} (no credentials were given; the repository may not exist or may need authentication)"
        )
    if names & {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"} or status == 404:
        return NotFound(msg)
    if status == 400 or names & {"NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "MANIFEST_INVALID"}:
        return InvalidArgument(msg)
    return Unavailable(msg)


class ProgressWatch:
    """Fails a transfer whose rate stays below ``min_rate`` for a whole window.

    Only time spent waiting on the network counts: time the consumer takes to
    absorb a chunk (backpressure from unpacking) does not. The window is
    tumbling: every ``window`` seconds of network time, the bytes received in
    it must reach ``min_rate * window``. A big transfer at a healthy rate is
    never cut off, however long it takes.
    """

    def __init__(self, window: float, min_rate: float, label: str) -> None:
        self.window = max(window, 0.001)
        self.need = max(min_rate, 0.0) * self.window
        self.label = label
        self._net = 0.0
        self._bytes = 0

    def _check(self) -> None:
        if self._net < self.window:
            return
        if self._bytes < self.need:
            raise Unavailable(
                f"{self.label}: transfer stalled: {self._bytes} bytes in {self.window:g} s, below the "
                f"minimum rate of {self.need / self.window:g} bytes/s (image.pull_min_rate over "
                f"image.pull_progress_timeout)"
            )
        self._net = 0.0
        self._bytes = 0

    async def wait(self, aw: Callable[[], Awaitable[bytes]]) -> bytes:
        """Await one read (``aw()``), failing on a stall; returns b"" at end of stream."""
        loop = asyncio.get_running_loop()
        # Bounded: an empty window either raises or (after a good window) resets once.
        for _ in range(3):
            remaining = self.window - self._net
            start = loop.time()
            try:
                async with asyncio.timeout(remaining):
                    chunk = await aw()
            except TimeoutError:
                self._net = self.window
                self._check()
                continue
            self._net += loop.time() - start
            self._bytes += len(chunk)
            self._check()
            return chunk
        raise Unavailable(f"{self.label}: transfer stalled")

    async def within(self, aw: Awaitable[aiohttp.ClientResponse]) -> aiohttp.ClientResponse:
        """Await response headers, failing if they take longer than one window."""
        try:
            async with asyncio.timeout(self.window):
                return await aw
        except TimeoutError:
            raise Retryable(f"no answer from the registry within {self.window:g} s")
