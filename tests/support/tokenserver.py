"""A small Docker registry token server (the ``auth.token`` realm) for tests.

It runs as a ``BackgroundApp`` (own loop, own thread), so sync session fixtures can
start it and any test's loop can talk to it.  Tokens are RS256 JWTs signed
with the openssl CLI using a key whose self-signed certificate the registry trusts (sent
in the ``x5c`` header).  It checks Basic credentials (GET) or the OAuth2 password grant
(POST), grants scopes according to a ``TokenPolicy`` and records every request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.bgserver import BackgroundApp


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        """'repository:some/repo:pull,push' (the name may itself hold no colon-free guarantee)."""
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            raise ValueError(f"bad scope {text!r}")
        kind = kind.split("(", 1)[0]  # drop a resource class such as repository(plugin)
        return cls(kind, name, tuple(a for a in actions.split(",") if a))


@dataclass
class TokenPolicy:
    """Who may do what.

    ``grants`` maps a user to {repository glob: allowed actions}; ``None`` means every
    authenticated user gets whatever it asks for.  Anonymous callers get
    ``anonymous_actions`` on every repository (none by default).
    """

    users: dict[str, str]
    service: str = "pycrio-test-registry"
    issuer: str = "pycrio-test-issuer"
    anonymous_actions: frozenset[str] = frozenset()
    grants: dict[str, dict[str, frozenset[str]]] | None = None
    expires_in: int = 300

    def granted(self, user: str | None, scope: Scope) -> list[str]:
        if user is None:
            allowed: frozenset[str] | set[str] = (
                self.anonymous_actions if scope.type == "repository" else set()
            )
        elif self.grants is None:
            return list(scope.actions)
        else:
            allowed = set()
            for pattern, actions in self.grants.get(user, {}).items():
                if fnmatch.fnmatchcase(scope.name, pattern):
                    allowed |= actions
        if "*" in allowed:
            return list(scope.actions)
        return [a for a in scope.actions if a in allowed]


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered (for assertions)."""

    method: str
    user: str | None
    service: str
    scopes: tuple[str, ...]
    status: int
    access: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


@dataclass
class TokenServer:
    policy: TokenPolicy
    key_file: Path
    cert_file: Path
    ssl_context: ssl.SSLContext | None = None
    requests: list[TokenRequest] = field(default_factory=list)
    port: int = 0
    _server: BackgroundApp | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def realm(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/token"

    def snapshot(self) -> list[TokenRequest]:
        with self._lock:
            return list(self.requests)

    # -- lifecycle

    def start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._get_token)
        app.router.add_post("/token", self._post_token)
        self._server = BackgroundApp(app, self.ssl_context)
        self._server.start()
        self.port = self._server.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    # -- handlers

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _basic_user(self, request: web.Request) -> tuple[bool, str | None]:
        """(ok, user): ok is False when credentials were given but are wrong."""
        header = request.headers.get("Authorization", "")
        if not header:
            return True, None
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        if self.policy.users.get(user) != password or not password:
            return False, user
        return True, user

    async def _get_token(self, request: web.Request) -> web.Response:
        scopes = tuple(s for raw in request.query.getall("scope", []) for s in raw.split(" ") if s)
        service = request.query.get("service", "")
        ok, user = self._basic_user(request)
        if not ok:
            self._record(TokenRequest("GET", user, service, scopes, 401))
            return _error(401, "UNAUTHORIZED", "invalid username or password", basic=True)
        return await self._issue("GET", user, service, scopes)

    async def _post_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        scopes = tuple(s for s in str(form.get("scope", "")).split(" ") if s)
        service = str(form.get("service", ""))
        if form.get("grant_type") != "password":
            self._record(TokenRequest("POST", None, service, scopes, 400))
            return _error(400, "unsupported_grant_type", "only the password grant is supported")
        user = str(form.get("username", ""))
        if not user or self.policy.users.get(user) != str(form.get("password", "")):
            self._record(TokenRequest("POST", user or None, service, scopes, 401))
            return _error(401, "invalid_grant", "invalid username or password")
        return await self._issue("POST", user, service, scopes)

    async def _issue(
        self, method: str, user: str | None, service: str, scopes: tuple[str, ...]
    ) -> web.Response:
        if service != self.policy.service:
            self._record(TokenRequest(method, user, service, scopes, 400))
            return _error(400, "DENIED", f"unknown service {service!r}")
        access: list[dict[str, Any]] = []
        try:
            parsed = [Scope.parse(s) for s in scopes]
        except ValueError as e:
            self._record(TokenRequest(method, user, service, scopes, 400))
            return _error(400, "DENIED", str(e))
        for scope in parsed:
            actions = self.policy.granted(user, scope)
            if actions:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        now = int(time.time())
        claims = {
            "iss": self.policy.issuer,
            "sub": user or "",
            "aud": service,
            "exp": now + self.policy.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        token = await self._sign(claims)
        self._record(
            TokenRequest(
                method, user, service, scopes, 200,
                tuple((a["type"], a["name"], tuple(a["actions"])) for a in access),
            )
        )  # fmt: skip
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.policy.expires_in,
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        }
        return web.json_response(body)

    async def _sign(self, claims: dict[str, Any]) -> str:
        pem = self.cert_file.read_text()
        der_b64 = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
        header = {"typ": "JWT", "alg": "RS256", "x5c": [der_b64]}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        proc = await asyncio.create_subprocess_exec(
            "openssl", "dgst", "-sha256", "-sign", str(self.key_file),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        sig, err = await asyncio.wait_for(proc.communicate(signing_input.encode()), timeout=10)
        if proc.returncode != 0:
            raise RuntimeError(f"openssl signing failed: {err.decode(errors='replace')}")
        return signing_input + "." + b64url(sig)


def _error(status: int, code: str, message: str, basic: bool = False) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="pycrio-test-token"'} if basic else None
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status, headers=headers)
