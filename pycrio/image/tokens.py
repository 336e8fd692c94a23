"""Registry auth challenges and the bearer-token cache.

``WWW-Authenticate: Bearer realm="...",service="...",scope="..."`` (or
``Basic realm="..."``) is parsed into :class:`Challenge`. Tokens from a
token server are cached per (realm, service, scope, credentials) until
shortly before they expire.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Default lifetime of a token that does not say (distribution token spec).
DEFAULT_EXPIRES_IN = 60
# Tokens are dropped this long before they really expire, or at 90 % of their life.
EXPIRY_MARGIN = 10.0

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*(?:,|$)')


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "bearer" or "basic"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse one WWW-Authenticate header value (may hold several challenges)."""
    out: list[Challenge] = []
    rest = header.strip()
    # Bounded: every iteration consumes at least the scheme token.
    for _ in range(16):
        if not rest:
            break
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if m is None:
            break
        scheme = m.group(1).lower()
        rest = rest[m.end() :]
        params: dict[str, str] = {}
        while rest:
            pm = _PARAM_RE.match(rest)
            if pm is None:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value or "")
            rest = rest[pm.end() :]
            # The next token without '=' starts a new challenge.
            if re.match(r"[A-Za-z][A-Za-z0-9_-]*\s+[A-Za-z0-9_.-]+\s*=", rest):
                break
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


def pull_scope(path: str) -> str:
    return f"repository:{path}:pull"


@dataclass
class _Entry:
    token: str
    expires: float


class TokenCache:
    """Bearer tokens keyed by (realm, service, scope, credentials fingerprint)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[tuple[str, str, str, str], _Entry] = {}
        self._now = now

    def get(self, key: tuple[str, str, str, str]) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        if self._now() >= entry.expires:
            del self._tokens[key]
            return None
        return entry.token

    def put(self, key: tuple[str, str, str, str], token: str, expires_in: float) -> None:
        life = expires_in if expires_in > 0 else DEFAULT_EXPIRES_IN
        keep = min(life - EXPIRY_MARGIN, life * 0.9)
        if keep <= 0:
            return
        self._tokens[key] = _Entry(token, self._now() + keep)
        # Bound the cache: drop expired entries when it grows.
        if len(self._tokens) > 1024:
            now = self._now()
            for k in [k for k, e in self._tokens.items() if e.expires <= now]:
                del self._tokens[k]

    def drop(self, key: tuple[str, str, str, str]) -> None:
        self._tokens.pop(key, None)
