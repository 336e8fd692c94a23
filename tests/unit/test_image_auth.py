from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument, Unauthenticated
from pycrio.image.auth import ANONYMOUS, AuthInput, Credentials, credentials_for, default_auth_files
from pycrio.image.tokens import TokenCache, parse_challenges, pull_scope


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_auth(path: Path, auths: dict[str, object], top: bool = False) -> Path:
    path.write_text(json.dumps(auths if top else {"auths": auths}))
    return path


def test_request_credentials_win(tmp_path: Path) -> None:
    f = write_auth(tmp_path / "auth.json", {"reg.io": {"auth": b64("file:pw")}})
    got = credentials_for(AuthInput(username="u", password="p"), "reg.io", "a/b", str(f))
    assert (got.username, got.password) == ("u", "p")
    got = credentials_for(AuthInput(auth=b64("x:y:z")), "reg.io", "a", str(f))
    assert (got.username, got.password) == ("x", "y:z")
    got = credentials_for(AuthInput(identity_token="tok"), "reg.io", "a", str(f))
    assert got.identity_token == "tok" and not got.has_basic()
    got = credentials_for(AuthInput(registry_token="bearer"), "reg.io", "a", str(f))
    assert got.registry_token == "bearer"
    # An empty AuthConfig falls through to the file.
    got = credentials_for(AuthInput(server_address="reg.io"), "reg.io", "a", str(f))
    assert (got.username, got.password) == ("file", "pw")


def test_bad_request_auth() -> None:
    with pytest.raises(InvalidArgument):
        credentials_for(AuthInput(auth="!!notbase64"), "reg.io", "a")
    with pytest.raises(InvalidArgument):
        credentials_for(AuthInput(auth=b64("nocolon")), "reg.io", "a")


def test_file_lookup_most_specific_first(tmp_path: Path) -> None:
    f = write_auth(
        tmp_path / "auth.json",
        {
            "reg.io": {"auth": b64("host:1")},
            "reg.io/team": {"auth": b64("team:2")},
            "reg.io/team/app": {"auth": b64("app:3")},
            "https://index.docker.io/v1/": {"auth": b64("hub:4")},
            "tok.io": {"identitytoken": "refresh-me"},
            "broken.io": "not an object",
        },
    )
    assert credentials_for(None, "reg.io", "team/app", str(f)).username == "app"
    assert credentials_for(None, "reg.io", "team/other", str(f)).username == "team"
    assert credentials_for(None, "reg.io", "solo", str(f)).username == "host"
    assert credentials_for(None, "docker.io", "library/busybox", str(f)).username == "hub"
    assert credentials_for(None, "tok.io", "x", str(f)).identity_token == "refresh-me"
    assert credentials_for(None, "other.io", "x", str(f)) is ANONYMOUS
    assert credentials_for(None, "broken.io", "x", str(f)) is ANONYMOUS
    # A configured file that does not exist: anonymous.
    assert credentials_for(None, "reg.io", "x", str(tmp_path / "nope.json")) is ANONYMOUS


def test_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(Unauthenticated, match=str(bad)):
        credentials_for(None, "reg.io", "x", str(bad))
    f = write_auth(tmp_path / "a.json", {"reg.io": {"auth": b64("nocolon")}})
    with pytest.raises(InvalidArgument, match=r"reg\.io"):
        credentials_for(None, "reg.io", "x", str(f))


def test_default_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    files = default_auth_files()
    assert files[0] == tmp_path / "run" / "containers" / "auth.json"
    assert files[1] == tmp_path / "cfg" / "containers" / "auth.json"
    assert files[2] == tmp_path / "home" / ".docker" / "config.json"
    assert files[3] == tmp_path / "home" / ".dockercfg"
    (tmp_path / "home" / ".docker").mkdir(parents=True)
    write_auth(files[2], {"reg.io": {"auth": b64("docker:cfg")}})
    write_auth(files[3], {"old.io": {"auth": b64("legacy:cfg")}}, top=True)
    assert credentials_for(None, "reg.io", "x").username == "docker"
    assert credentials_for(None, "old.io", "x").username == "legacy"
    # The primary file wins over the docker one.
    files[0].parent.mkdir(parents=True)
    write_auth(files[0], {"reg.io": {"auth": b64("primary:pw")}})
    assert credentials_for(None, "reg.io", "x").username == "primary"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert str(default_auth_files()[0]).startswith("/run/containers/")


def test_credentials_hide_secrets() -> None:
    c = Credentials("user", "hunter2", "idtok", "regtok")
    assert "hunter2" not in repr(c) and "idtok" not in repr(c)
    assert c.fingerprint() != Credentials("user", "other").fingerprint()
    assert c.basic_header() == "Basic " + b64("user:hunter2")


def test_parse_challenges() -> None:
    chs = parse_challenges(
        'Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull,push"'
    )
    assert len(chs) == 1
    assert chs[0].scheme == "bearer"
    assert chs[0].realm == "https://auth.io/token"
    assert chs[0].service == "registry.io"
    assert chs[0].params["scope"] == "repository:a/b:pull,push"
    chs = parse_challenges('Basic realm="Registry Realm"')
    assert chs[0].scheme == "basic" and chs[0].realm == "Registry Realm"
    chs = parse_challenges('Basic realm="a", Bearer realm="https://t/x",service=s')
    assert [c.scheme for c in chs] == ["basic", "bearer"]
    assert chs[1].service == "s"
    assert parse_challenges("") == []
    assert parse_challenges('Bearer realm="with \\"quote\\""')[0].realm == 'with "quote"'
    assert pull_scope("a/b") == "repository:a/b:pull"


def test_token_cache_expiry() -> None:
    now = [1000.0]
    cache = TokenCache(now=lambda: now[0])
    key = ("realm", "svc", "scope", "fp")
    cache.put(key, "t1", 300)
    assert cache.get(key) == "t1"
    # Dropped 10 % (at least 10 s) before the real expiry.
    now[0] += 265
    assert cache.get(key) == "t1"
    now[0] += 10
    assert cache.get(key) is None
    # No expires_in: the 60 s default (minus the margin).
    cache.put(key, "t2", 0)
    now[0] += 49
    assert cache.get(key) == "t2"
    now[0] += 2
    assert cache.get(key) is None
    cache.put(key, "t3", 300)
    cache.drop(key)
    assert cache.get(key) is None
    # Keys differ by credentials.
    cache.put(key, "a", 300)
    assert cache.get(("realm", "svc", "scope", "other")) is None
