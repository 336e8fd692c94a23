"""Single-use tokens for streaming URLs (the kubelet's request cache semantics).

Each Exec/Attach/PortForward RPC stores its request under a random 8-character base64url
token (6 random bytes).  A token can be consumed once, expires after a TTL (60 s by default),
and at most ``max_in_flight`` (1000) tokens may be outstanding.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from pycrio.errors import Internal, ResourceExhausted

T = TypeVar("T")

TOKEN_BYTES = 6
DEFAULT_TTL = 60.0
DEFAULT_MAX_IN_FLIGHT = 1000


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii")


class RequestCache(Generic[T]):
    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0 or max_in_flight <= 0:
            raise ValueError("ttl and max_in_flight must be positive")
        self._ttl = ttl
        self._max = max_in_flight
        self._clock = clock
        # Insertion order is expiry order because the TTL is constant.
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        self._gc(self._clock())
        return len(self._entries)

    def insert(self, request: T) -> str:
        now = self._clock()
        self._gc(now)
        if len(self._entries) >= self._max:
            raise ResourceExhausted("maximum number of in-flight streaming requests exceeded")
        for _ in range(10):
            token = new_token()
            if token not in self._entries:
                self._entries[token] = (now + self._ttl, request)
                return token
        raise Internal("failed to generate a unique streaming token")

    def consume(self, token: str) -> T | None:
        """The request stored under the token, once; None when unknown, used or expired."""
        entry = self._entries.pop(token, None)
        if entry is None:
            return None
        expires, request = entry
        if self._clock() > expires:
            return None
        return request

    def _gc(self, now: float) -> None:
        entries = self._entries
        while entries:
            token, (expires, _) = next(iter(entries.items()))
            if now <= expires:
                return
            del entries[token]
