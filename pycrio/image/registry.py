"""An asynchronous OCI distribution client (pull side) on aiohttp.

One :class:`RegistryClient` per daemon owns the connection pool, the TLS
contexts, the ping results and the token cache. :meth:`RegistryClient.repository`
gives a :class:`Repository` for one pull source and set of credentials.

- TLS with the system CAs plus ``<certs_dir>/<host[:port]>/*.crt`` (and a
  client certificate from ``*.cert``/``*.key``); an insecure registry is
  tried over HTTPS without verification, then over plain HTTP.
- Auth: ``/v2/`` ping, then Bearer tokens (cached), Basic, an OAuth2
  refresh token (``identity_token``) or a given ``registry_token``.
- Every request is retried with exponential backoff on 5xx answers and
  broken connections; redirects are followed by hand, and the
  ``Authorization`` header never leaves the registry's origin.
- Blob downloads resume with ``Range`` after a break, stop on a stall (see
  :class:`~pycrio.image.transfer.ProgressWatch`), and are checked against
  the descriptor's size and digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from pycrio import __version__
from pycrio.config import ImageConfig
from pycrio.errors import Unauthenticated, Unavailable
from pycrio.image.auth import Credentials
from pycrio.image.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor, ManifestError, sha256_digest
from pycrio.image.registries import PullSource
from pycrio.image.tokens import Challenge, TokenCache, parse_challenges, pull_scope
from pycrio.image.transfer import (
    ERROR_BODY_MAX,
    RETRYABLE,
    RETRYABLE_OR_BODY,
    ProgressWatch,
    Retryable,
    backoff_delay,
    describe,
    error_from_response,
)

DOCKER_HUB_HOST = "registry-1.docker.io"
MAX_REDIRECTS = 8
# Reconnects of one blob that made progress before breaking; bounds a flapping server.
MAX_RESUMES = 100
PING_TTL = 600.0
READ_CHUNK = 1 << 20

OnChunk = Callable[[bytes], Awaitable[None]]


def endpoint_host(domain: str) -> str:
    return DOCKER_HUB_HOST if domain == "docker.io" else domain


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


async def read_limited(resp: aiohttp.ClientResponse, limit: int, watch: ProgressWatch, what: str) -> bytes:
    """The whole body, refusing more than ``limit`` bytes."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise ManifestError(f"{what}: the registry announces {declared} bytes (max {limit})")
    buf = bytearray()
    while True:
        chunk = await watch.wait(resp.content.readany)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise ManifestError(f"{what}: more than {limit} bytes")


class RegistryClient:
    """The shared HTTP machinery of every pull."""

    def __init__(
        self,
        settings: Callable[[], ImageConfig],
        *,
        backoff: float = 0.5,
        user_agent: str = f"pycrio/{__version__}",
    ) -> None:
        self._settings = settings
        self.backoff = backoff
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._tokens = TokenCache()
        self._token_locks: dict[tuple[str, str, str, str], asyncio.Lock] = {}
        self._bases: dict[tuple[str, bool], tuple[str, float]] = {}
        self._base_locks: dict[tuple[str, bool], asyncio.Lock] = {}
        self._challenges: dict[str, list[Challenge]] = {}
        self._ssl: dict[str, tuple[tuple[object, ...], ssl.SSLContext]] = {}

    # -- plumbing -----------------------------------------------------------
    @property
    def settings(self) -> ImageConfig:
        return self._settings()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=30),
                headers={"User-Agent": self.user_agent},
                read_bufsize=READ_CHUNK,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def watch(self, label: str) -> ProgressWatch:
        cfg = self.settings
        return ProgressWatch(float(cfg.pull_progress_timeout), float(cfg.pull_min_rate), label)

    def _ssl_context(self, hostport: str) -> ssl.SSLContext:
        """System CAs plus the host's certs.d directory, re-read when it changes."""
        certs = Path(self.settings.certs_dir) / hostport
        try:
            files = sorted(certs.iterdir()) if certs.is_dir() else []
        except OSError:
            files = []
        sig: tuple[object, ...] = (str(certs), *((str(f), f.stat().st_mtime_ns) for f in files))
        cached = self._ssl.get(hostport)
        if cached is not None and cached[0] == sig:
            return cached[1]
        ctx = ssl.create_default_context()
        for f in files:
            if f.suffix == ".crt":
                ctx.load_verify_locations(cafile=str(f))
            elif f.suffix == ".cert":
                key = f.with_suffix(".key")
                if key.exists():
                    ctx.load_cert_chain(str(f), str(key))
        self._ssl[hostport] = (sig, ctx)
        return ctx

    def _ssl_for(self, url: URL, insecure_origin: URL | None) -> ssl.SSLContext | bool:
        if url.scheme != "https":
            return True
        if insecure_origin is not None and url.origin() == insecure_origin:
            return False
        host = url.host or ""
        hostport = host if url.port in (None, 443) else f"{host}:{url.port}"
        return self._ssl_context(hostport)

    async def _send_once(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        insecure_origin: URL | None,
        data: Any,
        watch: ProgressWatch,
    ) -> aiohttp.ClientResponse:
        origin = url.origin()
        h = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            if url.origin() != origin:
                # Credentials are for the registry alone, never for blob storage.
                h.pop("Authorization", None)
            resp = await watch.within(
                self.session().request(
                    method, url, headers=h, data=data, allow_redirects=False,
                    ssl=self._ssl_for(url, insecure_origin),
                )
            )
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                resp.release()
                url = url.join(URL(location))
                if resp.status == 303:
                    method, data = "GET", None
                continue
            return resp
        raise Unavailable(f"{origin}: more than {MAX_REDIRECTS} redirects")

    async def send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        *,
        what: str,
        insecure_origin: URL | None = None,
        data: Any = None,
        watch: ProgressWatch | None = None,
        attempts: int | None = None,
    ) -> aiohttp.ClientResponse:
        """One request, retried on 5xx and broken connections; 4xx answers are returned."""
        n = attempts if attempts is not None else max(self.settings.pull_retries, 1)
        w = watch or self.watch(what)
        last = ""
        for attempt in range(1, n + 1):
            try:
                resp = await self._send_once(method, url, headers, insecure_origin, data, w)
            except aiohttp.ClientConnectorCertificateError as exc:
                # Not transient: another attempt gets the same certificate.
                raise Unavailable(
                    f"{what}: TLS certificate of {url.host}:{url.port} is not trusted ({describe(exc)}); "
                    f"add its CA as {self.settings.certs_dir}/<host:port>/ca.crt or mark it insecure"
                )
            except RETRYABLE as exc:
                last = describe(exc)
            else:
                if resp.status < 500 and resp.status != 408:
                    return resp
                try:
                    body = await read_limited(resp, ERROR_BODY_MAX, w, what)
                except RETRYABLE_OR_BODY:
                    body = b""
                finally:
                    resp.release()
                last = str(error_from_response(resp.status, body, what, had_credentials=False))
            if attempt < n:
                await asyncio.sleep(backoff_delay(self.backoff, attempt))
        raise Unavailable(f"{what}: giving up after {n} attempt(s): {last}")

    # -- endpoints and auth -------------------------------------------------
    async def base(self, host: str, insecure: bool) -> str:
        """``scheme://host`` of a registry, pinging ``/v2/`` on first use."""
        key = (host, insecure)
        cached = self._bases.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        lock = self._base_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._bases.get(key)
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0]
            base = await self._ping(host, insecure)
            self._bases[key] = (base, time.monotonic() + PING_TTL)
            return base

    async def _ping(self, host: str, insecure: bool) -> str:
        errors: list[str] = []
        schemes = ("https", "http") if insecure else ("https",)
        for scheme in schemes:
            base = f"{scheme}://{host}"
            url = URL(f"{base}/v2/")
            what = f"registry {host}: GET /v2/ over {scheme}"
            # Probing HTTPS on an insecure registry gets one attempt; the fallback gets the retries.
            one_shot = insecure and scheme == "https"
            try:
                resp = await self.send(
                    "GET", url, {}, what=what, insecure_origin=url.origin() if insecure else None,
                    attempts=1 if one_shot else None,
                )
            except Unavailable as exc:
                errors.append(str(exc))
                continue
            async with resp:
                if resp.status == 401:
                    self._challenges[base] = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                else:
                    self._challenges[base] = []
            return base
        raise Unavailable(f"cannot reach registry {host}: {'; '.join(errors)}")

    def update_challenges(self, base: str, header: str) -> bool:
        new = parse_challenges(header)
        if not new:
            return False
        old = self._challenges.get(base)
        self._challenges[base] = new
        return old != new

    async def auth_header(
        self, base: str, path: str, creds: Credentials, insecure: bool, refresh: bool = False
    ) -> str | None:
        if creds.registry_token:
            return f"Bearer {creds.registry_token}"
        challenges = self._challenges.get(base, [])
        for ch in challenges:
            if ch.scheme == "bearer" and ch.realm:
                token = await self._token(base, ch, pull_scope(path), creds, insecure, refresh)
                return f"Bearer {token}"
        for ch in challenges:
            if ch.scheme == "basic" and creds.has_basic():
                return creds.basic_header()
        return None

    async def _token(
        self, base: str, ch: Challenge, scope: str, creds: Credentials, insecure: bool, refresh: bool
    ) -> str:
        key = (ch.realm, ch.service, scope, creds.fingerprint())
        if refresh:
            self._tokens.drop(key)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is None:
                token, expires_in = await self._fetch_token(base, ch, scope, creds, insecure)
                self._tokens.put(key, token, expires_in)
            return token

    async def _fetch_token(
        self, base: str, ch: Challenge, scope: str, creds: Credentials, insecure: bool
    ) -> tuple[str, float]:
        realm = URL(ch.realm)
        if realm.scheme not in ("http", "https") or not realm.host:
            raise Unauthenticated(f"registry {base}: unusable token realm {ch.realm!r}")
        if realm.scheme == "http" and not (insecure or _is_loopback(realm.host)):
            raise Unauthenticated(
                f"registry {base}: token realm {ch.realm} is plain HTTP; refusing to send credentials "
                "over it (mark the registry insecure in registries.conf to allow it)"
            )
        params = {"scope": scope}
        if ch.service:
            params["service"] = ch.service
        what = f"token server {realm.origin()} (scope {scope})"
        insecure_origin = realm.origin() if insecure else None
        resp: aiohttp.ClientResponse | None = None
        if creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "pycrio", **params}
            resp = await self.send("POST", realm, {}, what=what, data=form, insecure_origin=insecure_origin)
            if resp.status in (404, 405):
                resp.release()
                resp = None
        if resp is None:
            headers = {"Authorization": creds.basic_header()} if creds.has_basic() else {}
            if creds.username:
                params["account"] = creds.username
            url = realm.update_query(params)
            resp = await self.send("GET", url, headers, what=what, insecure_origin=insecure_origin)
        async with resp:
            body = await read_limited(resp, 1 << 20, self.watch(what), what)
            if resp.status >= 400:
                had = creds.has_basic() or bool(creds.identity_token)
                raise error_from_response(resp.status, body, what, had_credentials=had)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires_in = float(doc.get("expires_in") or 0)
        except (ValueError, AttributeError, TypeError):
            raise Unauthenticated(f"{what}: the answer is not a token document")
        if not isinstance(token, str) or not token:
            raise Unauthenticated(f"{what}: the answer holds no token")
        return token, expires_in

    def repository(self, source: PullSource, creds: Credentials) -> Repository:
        return Repository(self, source, creds)


class Repository:
    """One repository on one registry, as seen with one set of credentials."""

    def __init__(self, client: RegistryClient, source: PullSource, creds: Credentials) -> None:
        self.client = client
        self.source = source
        self.host = endpoint_host(source.ref.domain)
        self.path = source.ref.path
        self.insecure = source.insecure
        self.creds = creds
        self.label = source.ref.name

    async def request(
        self, suffix: str, headers: dict[str, str], what: str, watch: ProgressWatch | None = None
    ) -> aiohttp.ClientResponse:
        """GET ``/v2/<path>/<suffix>`` with auth; an error answer raises a mapped error."""
        c = self.client
        base = await c.base(self.host, self.insecure)
        url = URL(f"{base}/v2/{self.path}/{suffix}")
        insecure_origin = url.origin() if self.insecure else None
        for auth_try in range(2):
            h = dict(headers)
            auth = await c.auth_header(base, self.path, self.creds, self.insecure, refresh=auth_try > 0)
            if auth:
                h["Authorization"] = auth
            resp = await c.send("GET", url, h, what=what, insecure_origin=insecure_origin, watch=watch)
            if resp.status == 401 and auth_try == 0:
                changed = c.update_challenges(base, resp.headers.get("WWW-Authenticate", ""))
                if changed or auth is not None:
                    resp.release()
                    continue
            if resp.status >= 400:
                async with resp:
                    try:
                        body = await read_limited(resp, ERROR_BODY_MAX, watch or c.watch(what), what)
                    except ManifestError:
                        body = b""
                had = self.creds.has_basic() or bool(self.creds.identity_token or self.creds.registry_token)
                raise error_from_response(resp.status, body, what, had_credentials=had)
            return resp
        raise AssertionError("unreachable")

    async def manifest(self, reference: str) -> tuple[bytes, str, str, str]:
        """(body, content type, sha256 digest of the body, Docker-Content-Digest or "")."""
        sep = "@" if ":" in reference else ":"
        what = f"manifest {self.label}{sep}{reference}"
        watch = self.client.watch(what)
        resp = await self.request(f"manifests/{reference}", {"Accept": ACCEPT}, what, watch)
        async with resp:
            body = await read_limited(resp, MAX_MANIFEST_BYTES, watch, what)
            ctype = resp.headers.get("Content-Type", "")
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        return body, ctype, sha256_digest(body), header_digest

    async def blob_bytes(self, desc: Descriptor, what: str) -> bytes:
        """A small blob (a config) in memory, checked against size and digest."""
        buf = bytearray()

        async def sink(chunk: bytes) -> None:
            buf.extend(chunk)

        await self.fetch_blob(desc, sink, what)
        return bytes(buf)

    async def fetch_blob(
        self, desc: Descriptor, on_chunk: OnChunk, what: str, *, verify: bool = True
    ) -> None:
        """Stream a blob into ``on_chunk``, resuming after breaks; verify size and digest.

        Nothing beyond the descriptor's size is passed on, and a digest
        mismatch raises after the last chunk (the consumer must then discard
        what it got). ``verify=False`` skips the digest (not the size) for a
        consumer that hashes the stream itself, as the LayerWriter does.
        """
        algo, _, want = desc.digest.partition(":")
        hasher = hashlib.new(algo) if verify else None
        size = desc.size
        received = 0
        failures = 0
        resumes = 0
        retries = max(self.client.settings.pull_retries, 1)
        watch = self.client.watch(what)
        last = ""
        while True:
            headers = {"Range": f"bytes={received}-"} if received else {}
            progress_before = received
            try:
                resp = await self.request(f"blobs/{desc.digest}", headers, what, watch)
                async with resp:
                    skip = self._resume_skip(resp, received, size, what)
                    while True:
                        chunk = await watch.wait(resp.content.readany)
                        if not chunk:
                            break
                        if skip:
                            drop = min(skip, len(chunk))
                            chunk, skip = chunk[drop:], skip - drop
                            if not chunk:
                                continue
                        if received + len(chunk) > size:
                            raise ManifestError(f"{what}: the registry sent more than the {size} bytes "
                                                "the manifest declares")
                        if hasher is not None:
                            hasher.update(chunk)
                        received += len(chunk)
                        await on_chunk(chunk)
                if received < size:
                    raise Retryable(f"connection closed after {received} of {size} bytes")
                break
            except RETRYABLE as exc:
                last = describe(exc)
            if received > progress_before:
                resumes += 1
                failures = 0
                if resumes > MAX_RESUMES:
                    raise Unavailable(f"{what}: broke off more than {MAX_RESUMES} times; last: {last}")
            else:
                failures += 1
                if failures >= retries:
                    raise Unavailable(f"{what}: giving up after {failures} failed attempt(s) at byte "
                                      f"{received} of {size}: {last}")
                await asyncio.sleep(backoff_delay(self.client.backoff, failures))
        if hasher is not None and hasher.hexdigest() != want:
            raise ManifestError(f"{what}: content does not match digest {desc.digest} "
                                f"(got {algo}:{hasher.hexdigest()})")

    @staticmethod
    def _resume_skip(resp: aiohttp.ClientResponse, received: int, size: int, what: str) -> int:
        """Bytes to drop at the start of an answer (a 200 to a Range request restarts at 0)."""
        if resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            start = crange.removeprefix("bytes ").split("-", 1)[0]
            if not start.isdigit() or int(start) != received:
                raise Retryable(f"bad Content-Range {crange!r} for a resume at byte {received}")
            return 0
        length = resp.content_length
        if length is not None and length != size:
            raise ManifestError(f"{what}: the registry says the blob is {length} bytes, "
                                f"the manifest declares {size}")
        return received
