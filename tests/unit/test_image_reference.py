from __future__ import annotations

import pytest

from pycrio.errors import InvalidArgument
from pycrio.image.reference import Reference, candidates, is_image_id, parse, validate_digest

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox:1", "docker.io/library/busybox:1"),
        ("user/app", "docker.io/user/app:latest"),
        ("quay.io/ns/app:v1", "quay.io/ns/app:v1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:tag", "localhost:5000/app:tag"),
        ("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000/a/b/c:x"),
        ("[::1]:5000/app", "[::1]:5000/app:latest"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
        (f"reg.io/app:1.0@{D}", f"reg.io/app:1.0@{D}"),
        ("reg.io/a__b/c-d/e.f_g:T_1.-x", "reg.io/a__b/c-d/e.f_g:T_1.-x"),
        ("reg.io/a--b", "reg.io/a--b:latest"),
        ("Registry.Example.com/app", "Registry.Example.com/app:latest"),
    ],
)
def test_normalise(text: str, want: str) -> None:
    assert str(parse(text)) == want


def test_parts() -> None:
    r = parse(f"localhost:5000/ns/app:1@{D}")
    assert r == Reference("localhost:5000", "ns/app", "1", D)
    assert r.name == "localhost:5000/ns/app"
    assert r.tag_or_digest == D
    assert r.tagged() == "localhost:5000/ns/app:1"
    assert r.digested() == f"localhost:5000/ns/app@{D}"
    d = parse(f"app@{D}")
    assert d.tag is None and d.tagged() is None
    assert parse("app", default_tag=False).tag is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "busy box",
        "BusyBox",
        "reg.io/App",
        "busybox:",
        "busybox:-bad",
        "busybox:" + "x" * 129,
        "busybox@sha256:abc",
        "busybox@sha256:" + "AB" * 32,
        "busybox@md5:" + "ab" * 16,
        "busybox@",
        "reg.io/",
        "/busybox",
        "busybox/",
        "a//b",
        "reg.io/-app",
        "reg.io/app-",
        "reg.io/a..b",
        "-reg.io/app",
        "reg.io:port/app",
        "http://reg.io/app",
        "a" * 64,
        "reg.io/" + "a" * 255,
        f"busybox@{D}@{D}",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(text)


def test_digest_validation() -> None:
    assert validate_digest(D) == D
    assert validate_digest("sha512:" + "0" * 128)
    for bad in ("sha256:" + "a" * 63, "sha256" + "a" * 64, "sha384:" + "a" * 96, "SHA256:" + "a" * 64):
        with pytest.raises(InvalidArgument):
            validate_digest(bad)


def test_short_names_and_search() -> None:
    assert [str(c) for c in candidates("busybox")] == ["docker.io/library/busybox:latest"]
    got = candidates("ns/app:1", ["quay.io", "docker.io", "127.0.0.1:5000"])
    assert [str(c) for c in got] == ["quay.io/ns/app:1", "docker.io/ns/app:1", "127.0.0.1:5000/ns/app:1"]
    got = candidates("app", ["reg.io", "docker.io"])
    assert [str(c) for c in got] == ["reg.io/app:latest", "docker.io/library/app:latest"]
    # Qualified names ignore the search list.
    assert [str(c) for c in candidates("reg.io/app", ["other.io"])] == ["reg.io/app:latest"]
    # Duplicates collapse.
    assert len(candidates("app", ["docker.io", "index.docker.io"])) == 1


def test_aliases() -> None:
    aliases = {"app": "quay.io/org/app", "ns/tool": "reg.io/tools/tool"}
    assert [str(c) for c in candidates("app:2", ["x.io"], aliases)] == ["quay.io/org/app:2"]
    assert [str(c) for c in candidates(f"ns/tool@{D}", [], aliases)] == [f"reg.io/tools/tool@{D}"]
    assert [str(c) for c in candidates("other", ["x.io"], aliases)] == ["x.io/other:latest"]


def test_bad_search_registry() -> None:
    with pytest.raises(InvalidArgument):
        candidates("app", ["not a host"])


def test_image_ids() -> None:
    assert is_image_id("a" * 64)
    assert is_image_id("sha256:" + "a" * 64)
    assert not is_image_id("busybox")
    assert not is_image_id("sha256:" + "a" * 63)
    with pytest.raises(InvalidArgument, match="image id"):
        candidates("f" * 64)
