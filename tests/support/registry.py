"""Run Debian's real ``docker-registry`` (distribution v2) for tests.

Three modes:

* ``plain``: HTTP, no auth;
* ``tls``: HTTPS with a test CA made by ``openssl`` and htpasswd (bcrypt) Basic auth;
* ``token``: HTTPS plus ``auth.token``; a ``TokenServer`` (tokenserver.py) issues JWTs signed
  with a test key whose certificate is the registry's ``rootcertbundle``.

Every registry listens on a random free port on 127.0.0.1, keeps its storage in its own
work dir and is stopped by pid.  These functions are synchronous (used from sync fixtures);
the async client lives in regclient.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.support.tokenserver import TokenPolicy, TokenServer

REGISTRY_BIN = "/usr/bin/docker-registry"
Mode = Literal["plain", "tls", "token"]

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the caller races other users for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost, and a token-signing pair."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    signer_cert: Path  # self-signed RSA certificate: the registry's token rootcertbundle
    signer_key: Path

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.server_cert), str(self.server_key))
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_pki(directory: Path) -> Pki:
    """Generate the whole test PKI with the openssl CLI (EC P-256 for TLS, RSA for tokens)."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", "7", "-sha256",
        "-subj", "/CN=pycrio test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key", cwd=d)
    _openssl("req", "-new", "-key", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "7", "-sha256", "-extfile", "server.ext",
        cwd=d,
    )  # fmt: skip
    _openssl("genrsa", "-out", "signer.key", "2048", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "signer.key", "-out", "signer.crt", "-days", "7", "-sha256",
        "-subj", "/CN=pycrio token signer",
        cwd=d,
    )  # fmt: skip
    return Pki(
        d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", d / "signer.crt", d / "signer.key"
    )


def make_htpasswd(path: Path, users: dict[str, str]) -> None:
    """An htpasswd file with bcrypt hashes (``htpasswd -B``), as the registry requires."""
    path.write_text("")
    for user, password in users.items():
        subprocess.run(
            ["htpasswd", "-B", "-C", "4", "-b", str(path), user, password],
            check=True,
            capture_output=True,
        )


# ---------------------------------------------------------------------------- registry


@dataclass
class Registry:
    """A running registry. ``host`` is what goes into image references."""

    mode: Mode
    host: str
    workdir: Path
    pid: int
    pki: Pki | None = None
    users: dict[str, str] = field(default_factory=dict)
    token_server: TokenServer | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def scheme(self) -> str:
        return "http" if self.mode == "plain" else "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def ca_file(self) -> Path | None:
        return self.pki.ca_cert if self.pki else None

    @property
    def username(self) -> str | None:
        return next(iter(self.users), None)

    @property
    def password(self) -> str | None:
        return self.users[self.username] if self.username else None

    @property
    def log_file(self) -> Path:
        return self.workdir / "registry.log"

    def ref(self, repo: str, tag: str = "latest") -> str:
        return f"{self.host}/{repo}:{tag}"

    def digest_ref(self, repo: str, digest: str) -> str:
        return f"{self.host}/{repo}@{digest}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.pki.client_ssl_context() if self.pki else None

    def stop(self) -> None:
        """Stop the registry (and its token server); safe to call twice."""
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None
        if self.token_server is not None:
            self.token_server.stop()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


def _config(mode: Mode, workdir: Path, port: int, pki: Pki | None, token: TokenServer | None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {workdir / 'storage'}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if mode != "plain":
        assert pki is not None
        lines += ["  tls:", f"    certificate: {pki.server_cert}", f"    key: {pki.server_key}"]
    if mode == "tls":
        lines += ["auth:", "  htpasswd:", "    realm: pycrio-test", f"    path: {workdir / 'htpasswd'}"]
    elif mode == "token":
        assert pki is not None and token is not None
        lines += [
            "auth:",
            "  token:",
            f"    realm: {token.realm}",
            f"    service: {token.policy.service}",
            f"    issuer: {token.policy.issuer}",
            f"    rootcertbundle: {pki.signer_cert}",
        ]
    return "\n".join(lines) + "\n"


def _probe(url: str, ctx: ssl.SSLContext | None) -> int | None:
    """HTTP status of GET url, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


def start_registry(
    workdir: Path,
    mode: Mode = "plain",
    pki: Pki | None = None,
    users: dict[str, str] | None = None,
    token_policy: TokenPolicy | None = None,
) -> Registry:
    """Start a registry in ``workdir`` and wait (bounded) until ``/v2/`` answers.

    ``tls`` and ``token`` need a ``pki`` (made here when omitted).  ``users`` default to one
    random-password user ``pycrio``.  For ``token`` the token server shares the PKI and
    serves HTTPS too.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if mode != "plain" and pki is None:
        pki = make_pki(workdir / "pki")
    creds = (
        dict(users) if users is not None else ({"pycrio": secrets.token_hex(8)} if mode != "plain" else {})
    )
    if mode == "tls":
        make_htpasswd(workdir / "htpasswd", creds)
    token: TokenServer | None = None
    if mode == "token":
        assert pki is not None
        policy = token_policy or TokenPolicy(users=creds)
        creds = dict(policy.users)
        token = TokenServer(policy, pki.signer_key, pki.signer_cert, ssl_context=pki.server_ssl_context())
        token.start()
    try:
        return _spawn(workdir, mode, pki, creds, token)
    except BaseException:
        if token is not None:
            token.stop()
        raise


def _spawn(
    workdir: Path, mode: Mode, pki: Pki | None, creds: dict[str, str], token: TokenServer | None
) -> Registry:
    last_error = ""
    for _attempt in range(3):  # a new port if another process grabbed ours
        port = free_port()
        cfg = workdir / "config.yml"
        cfg.write_text(_config(mode, workdir, port, pki, token))
        log = (workdir / "registry.log").open("ab")
        try:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        reg = Registry(mode, f"127.0.0.1:{port}", workdir, proc.pid, pki, creds, token, proc)
        ctx = pki.client_ssl_context() if pki else None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _probe(reg.url + "/v2/", ctx) is not None:
                return reg
            time.sleep(0.02)
        _terminate(proc)
        last_error = (workdir / "registry.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"docker-registry did not become ready:\n{last_error}")


@contextlib.contextmanager
def running_registry(workdir: Path, mode: Mode = "plain", **kwargs: object) -> Iterator[Registry]:
    """``with running_registry(tmp, "tls") as reg:`` — always stopped on exit."""
    reg = start_registry(workdir, mode, **kwargs)  # type: ignore[arg-type]
    try:
        yield reg
    finally:
        reg.stop()
