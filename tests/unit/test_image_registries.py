from __future__ import annotations

import os
from pathlib import Path

import pytest

from pycrio.errors import FailedPrecondition, PermissionDenied
from pycrio.image.reference import parse
from pycrio.image.registries import RegistriesLoader, load

MAIN = """
unqualified-search-registries = ["quay.io", "docker.io"]

[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"

[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "mirror-1.local:5000/mirrors/foo"
insecure = true

[[registry]]
location = "plain.local:5000"
insecure = true

[[registry]]
prefix = "*.corp.example"
blocked = true

[[registry]]
prefix = "*.dev.example"
insecure = true

[[registry]]
prefix = "ok.corp.example/public"
location = "ok.corp.example/public"

[[registry]]
prefix = "docker.io/library"
mirror-by-digest-only = true
[[registry.mirror]]
location = "hub-mirror.local/library"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def conf(tmp_path: Path) -> Path:
    return write(tmp_path / "registries.conf", MAIN)


def sources(cfg_path: Path, text: str, conf_dir: Path | None = None) -> list[tuple[str, bool, bool]]:
    cfg = load(cfg_path, conf_dir)
    return [(str(s.ref), s.insecure, s.mirror) for s in cfg.sources(parse(text))]


def test_rewrite_and_mirrors_in_order(conf: Path) -> None:
    assert sources(conf, "example.com/foo/image:latest") == [
        ("mirror-0.local/mirror-for-foo/image:latest", False, True),
        ("mirror-1.local:5000/mirrors/foo/image:latest", True, True),
        ("internal.example.net/bar/image:latest", False, False),
    ]
    # The prefix must end at a separator: foobar is not under foo.
    assert sources(conf, "example.com/foobar:1") == [("example.com/foobar:1", False, False)]


def test_location_only_entry_and_insecure(conf: Path) -> None:
    assert sources(conf, "plain.local:5000/a/b") == [("plain.local:5000/a/b:latest", True, False)]
    # Another port of the same host is another registry.
    assert sources(conf, "plain.local:5001/a") == [("plain.local:5001/a:latest", False, False)]


def test_wildcards_and_longest_prefix(conf: Path) -> None:
    with pytest.raises(PermissionDenied, match="blocked"):
        sources(conf, "a.corp.example/x")
    with pytest.raises(PermissionDenied):
        sources(conf, "deep.sub.corp.example/x:1")
    # A longer, exact prefix beats the wildcard.
    assert sources(conf, "ok.corp.example/public/x") == [("ok.corp.example/public/x:latest", False, False)]
    # The wildcard matches subdomains only, not the bare domain.
    assert sources(conf, "corp.example/x") == [("corp.example/x:latest", False, False)]
    # A wildcard without location applies its settings and keeps the name.
    assert sources(conf, "svc.dev.example/app:2") == [("svc.dev.example/app:2", True, False)]


def test_mirror_by_digest_only(conf: Path) -> None:
    assert sources(conf, "busybox") == [("docker.io/library/busybox:latest", False, False)]
    d = "sha256:" + "1" * 64
    assert sources(conf, f"busybox@{d}") == [
        (f"hub-mirror.local/library/busybox@{d}", False, True),
        (f"docker.io/library/busybox@{d}", False, False),
    ]


def test_pull_from_mirror(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "r.conf",
        """
[[registry]]
location = "up.io"
[[registry.mirror]]
location = "tags.local"
pull-from-mirror = "tag-only"
[[registry.mirror]]
location = "digests.local"
pull-from-mirror = "digest-only"
""",
    )
    assert [s[0] for s in sources(conf, "up.io/a:1")] == ["tags.local/a:1", "up.io/a:1"]
    d = "sha256:" + "2" * 64
    assert [s[0] for s in sources(conf, f"up.io/a@{d}")] == [f"digests.local/a@{d}", f"up.io/a@{d}"]


def test_no_config_at_all(tmp_path: Path) -> None:
    cfg = load(tmp_path / "missing.conf", tmp_path / "missing.d")
    assert cfg.search == []
    assert [str(s.ref) for s in cfg.sources(parse("busybox"))] == ["docker.io/library/busybox:latest"]


def test_dropins_override(conf: Path, tmp_path: Path) -> None:
    d = tmp_path / "registries.conf.d"
    write(d / "10-search.conf", 'unqualified-search-registries = ["127.0.0.1:5000"]\n')
    write(
        d / "20-foo.conf",
        '[[registry]]\nprefix = "example.com/foo"\nlocation = "replaced.local/foo"\n'
        '[aliases]\n"app" = "quay.io/org/app"\n',
    )
    write(d / "30-alias.conf", '[aliases]\n"app" = ""\n"tool" = "reg.io/t/tool"\n')
    write(d / "ignored.txt", "not toml at all [[[")
    cfg = load(conf, d)
    assert cfg.search == ["127.0.0.1:5000"]
    assert [str(s.ref) for s in cfg.sources(parse("example.com/foo/x"))] == ["replaced.local/foo/x:latest"]
    assert cfg.aliases == {"tool": "reg.io/t/tool"}


def test_v1_format(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "v1.conf",
        """
[registries.search]
registries = ["r1.io", "r2.io"]
[registries.insecure]
registries = ["r3.io:5000"]
[registries.block]
registries = ["bad.io"]
""",
    )
    cfg = load(conf, None)
    assert cfg.search == ["r1.io", "r2.io"]
    assert sources(conf, "r3.io:5000/x") == [("r3.io:5000/x:latest", True, False)]
    with pytest.raises(PermissionDenied):
        cfg.sources(parse("bad.io/x"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[registry]]\nprefix = 'a.io'\nlocation = 'b.io'\nbogus = 1\n", "unknown key"),
        ("[[registry]]\ninsecure = true\n", "prefix or a location"),
        ("[[registry]]\nlocation = 'https://a.io'\n", "scheme"),
        ("[[registry]]\nprefix = 'a*.io'\n", "wildcard|'\\*'"),
        ("[[registry]]\nprefix = '*.a.io/ns'\n", "bare host"),
        ("[[registry]]\nlocation = 'a.io'\ninsecure = 'yes'\n", "true or false"),
        ("[[registry]]\nlocation = 'a.io'\n[[registry.mirror]]\nlocation = ''\n", "mirror location"),
        (
            "[[registry]]\nlocation = 'a.io'\n[[registry.mirror]]\n"
            "location = 'm.io'\npull-from-mirror = 'x'\n",
            "pull-from-mirror",
        ),
        ("[[registry]]\nlocation = 'a.io'\n[[registry]]\nlocation = 'a.io'\n", "defined twice"),
        ("unqualified-search-registries = 'docker.io'\n", "array of strings"),
        ("short-name-mode = 'sometimes'\n", "short-name-mode"),
        ("[aliases]\n'x' = 'reg.io/x:1'\n", "tag or digest"),
        ("this is not toml", "not valid TOML"),
        ("[registries.search]\nregistries = ['a']\n[[registry]]\nlocation = 'b.io'\n", "version 1"),
        ("frobnicate = 1\n", "unknown key"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, match: str) -> None:
    conf = write(tmp_path / "bad.conf", text)
    with pytest.raises(FailedPrecondition, match=match) as exc:
        load(conf, None)
    assert str(conf) in str(exc.value)


def test_debian_shortnames_file_parses() -> None:
    path = Path("/etc/containers/registries.conf.d/shortnames.conf")
    if not path.exists():
        pytest.skip("no Debian shortnames.conf on this host")
    cfg = load(None, path.parent)
    assert cfg.aliases.get("busybox") == "docker.io/library/busybox"


def test_loader_rereads_on_change(tmp_path: Path) -> None:
    conf = write(tmp_path / "r.conf", 'unqualified-search-registries = ["a.io"]\n')
    loader = RegistriesLoader()
    first = loader.get(str(conf), str(tmp_path / "d"))
    assert first.search == ["a.io"]
    assert loader.get(str(conf), str(tmp_path / "d")) is first
    conf.write_text('unqualified-search-registries = ["b.io", "c.io"]\n')
    st = conf.stat()
    os.utime(conf, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert loader.get(str(conf), str(tmp_path / "d")).search == ["b.io", "c.io"]
    write(tmp_path / "d" / "x.conf", 'unqualified-search-registries = ["d.io"]\n')
    assert loader.get(str(conf), str(tmp_path / "d")).search == ["d.io"]
