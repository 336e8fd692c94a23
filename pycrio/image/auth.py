"""Registry credentials: the request's AuthConfig, then containers-auth.json(5).

The request's credentials win. Otherwise the auth file named in the
configuration is read, or, when none is named, the standard locations in
order: ``${XDG_RUNTIME_DIR}/containers/auth.json`` (or
``/run/containers/<uid>/auth.json``), ``${XDG_CONFIG_HOME}/containers/auth.json``,
``~/.docker/config.json`` and ``~/.dockercfg``. Within a file the most
specific key wins: ``host/ns/repo``, then ``host/ns``, then ``host``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrio.errors import InvalidArgument, Unauthenticated


@dataclass(frozen=True)
class AuthInput:
    """Credentials that came with a request (the CRI AuthConfig as plain data)."""

    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def empty(self) -> bool:
        return not (self.username or self.password or self.auth or self.identity_token or self.registry_token)


@dataclass(frozen=True)
class Credentials:
    """What the registry client presents: Basic creds, an OAuth2 refresh token or a bearer token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:
        # Never print secrets into logs.
        return f"Credentials(username={self.username!r}, secrets=<hidden>)"

    def has_basic(self) -> bool:
        return bool(self.username or self.password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def fingerprint(self) -> str:
        """A stable, non-reversible key for caches (tokens are cached per credentials)."""
        h = hashlib.sha256()
        for part in (self.username, self.password, self.identity_token, self.registry_token):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()[:32]


ANONYMOUS = Credentials()


def decode_auth(value: str, where: str) -> tuple[str, str]:
    """Decode a base64 ``user:password`` string."""
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument(f"{where}: 'auth' is not valid base64 of user:password")
    user, sep, password = raw.partition(":")
    if not sep:
        raise InvalidArgument(f"{where}: 'auth' does not decode to user:password")
    return user, password


def from_request(auth: AuthInput) -> Credentials:
    """The request's credentials (``auth`` fills in username/password when they are empty)."""
    username, password = auth.username, auth.password
    if auth.auth and not username and not password:
        username, password = decode_auth(auth.auth, "AuthConfig")
    return Credentials(username, password, auth.identity_token, auth.registry_token)


def default_auth_files() -> list[Path]:
    """The standard locations, most preferred first."""
    out: list[Path] = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        out.append(Path(runtime_dir) / "containers" / "auth.json")
    else:
        out.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    out.append(Path(config_home) / "containers" / "auth.json")
    home = Path(os.path.expanduser("~"))
    out.append(home / ".docker" / "config.json")
    out.append(home / ".dockercfg")
    return out


def _normalise_key(key: str) -> str:
    """``https://index.docker.io/v1/`` -> ``index.docker.io``; plain keys keep their path."""
    if "://" in key:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    if key in ("index.docker.io", "registry-1.docker.io"):
        return "docker.io"
    return key


def _entries(path: Path) -> dict[str, dict[str, Any]]:
    """The credential entries of one file, keyed by normalised registry/namespace."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise Unauthenticated(f"auth file {path}: cannot read: {exc}")
    if not isinstance(data, dict):
        raise Unauthenticated(f"auth file {path}: not a JSON object")
    # ~/.dockercfg has the entries at the top level; the others under "auths".
    auths = data.get("auths", data if path.name == ".dockercfg" else {})
    if not isinstance(auths, dict):
        raise Unauthenticated(f"auth file {path}: 'auths' is not an object")
    out: dict[str, dict[str, Any]] = {}
    for key, entry in auths.items():
        if isinstance(entry, dict):
            out.setdefault(_normalise_key(key), entry)
    return out


def _lookup_keys(host: str, path: str) -> list[str]:
    """``host/a/b/c`` -> [``host/a/b/c``, ``host/a/b``, ``host/a``, ``host``]."""
    parts = path.split("/") if path else []
    keys = [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    keys.append(host)
    return keys


def from_files(files: list[Path], host: str, path: str) -> Credentials | None:
    """The first matching entry in ``files`` for repository ``host/path``."""
    for file in files:
        entries = _entries(file)
        for key in _lookup_keys(host, path):
            entry = entries.get(key)
            if entry is None:
                continue
            where = f"auth file {file}, entry {key!r}"
            username = str(entry.get("username", ""))
            password = str(entry.get("password", ""))
            if entry.get("auth"):
                username, password = decode_auth(str(entry["auth"]), where)
            token = str(entry.get("identitytoken", ""))
            if username or password or token:
                return Credentials(username, password, token)
    return None


def credentials_for(
    request: AuthInput | None, host: str, path: str, auth_file: str = ""
) -> Credentials:
    """The credentials to use against repository ``host/path`` (anonymous when none)."""
    if request is not None and not request.empty():
        return from_request(request)
    files = [Path(auth_file)] if auth_file else default_auth_files()
    return from_files(files, host, path) or ANONYMOUS
