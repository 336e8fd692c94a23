"""The standard test images, built from Debian's busybox-static (/bin/busybox).

Small images are built in memory and memoised per process.  The big benchmark images
(many files, ~100 MB) are built once into an OCI layout under a cache dir and re-read
from there (their layers stay on disk).  Everything is deterministic for a given
/bin/busybox.

Note: busybox-static's shell runs applets in-process, so a test that needs a real exec
(masked paths, a seccomp rule on execve, no_new_privs) must run ``/bin/busybox <applet>``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support import elf
from tests.support.oci import (
    Compression,
    Dir,
    Entry,
    File,
    Flavour,
    Hardlink,
    Image,
    ImageConfig,
    Index,
    Layer,
    Opaque,
    Platform,
    Symlink,
    Whiteout,
    build_image,
    build_index,
    build_layer,
    build_layer_file,
)
from tests.support.oci_archive import read_oci_layout, write_oci_layout
from tests.support.regclient import push_image, push_image_sync

__all__ = ["push_image", "push_image_sync"]  # re-exported push helpers (and the builders below)

BUSYBOX = Path("/bin/busybox")
CATATONIT = Path("/usr/bin/catatonit")
CACHE_VERSION = 1

TEST_UID = 1000
TEST_GID = 1000
TEST_EXTRA_GID = 1001
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    f"test:x:{TEST_UID}:{TEST_GID}:test user:/home/test:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\n"
    "daemon:x:1:\n"
    "www-data:x:33:\n"
    f"test:x:{TEST_GID}:\n"
    f"testextra:x:{TEST_EXTRA_GID}:test\n"
    "nogroup:x:65534:\n"
)
WEB_PAGE = b"<html><body><h1>pycrio test page</h1></body></html>\n"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PYCRIO_TEST_IMAGE_CACHE", "/var/tmp/pycrio-test-images"))


@functools.lru_cache(maxsize=4)
def busybox_applets(binary: Path = BUSYBOX) -> tuple[str, ...]:
    out = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout
    return tuple(sorted(a for a in out.split() if a and a != "busybox"))


@functools.lru_cache(maxsize=1)
def busybox_fingerprint() -> str:
    return hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:16]


def busybox_entries(
    passwd: str = PASSWD, group: str = GROUP, *, binary: Path = BUSYBOX, hardlinks: bool = False
) -> list[Entry]:
    """A minimal rootfs: busybox and its applet links in /bin, /etc files, /tmp, homes.

    ``hardlinks=True`` makes the applets hard links (as the official busybox image has),
    so masking one path (say /bin/ls) does not mask busybox itself.  A dynamic ``binary``
    brings its libraries along.
    """
    entries: list[Entry] = [Dir(d) for d in ("bin", "dev", "etc", "home", "proc", "run", "sbin", "sys")]
    entries += [Dir("root", mode=0o700), Dir("tmp", mode=0o1777), Dir("usr"), Dir("usr/bin"), Dir("usr/sbin")]
    entries += [Dir("var"), Dir("var/run"), Dir("var/www")]
    entries.append(Dir("home/test", uid=TEST_UID, gid=TEST_GID))
    entries += binary_with_libs(binary, "bin/busybox")
    if hardlinks:
        # Extractors (Docker's, containerd's) apply a hard link's header mode to the shared inode.
        entries += [Hardlink(f"bin/{a}", target="bin/busybox", mode=0o755) for a in busybox_applets(binary)]
    else:
        entries += [Symlink(f"bin/{a}", "busybox") for a in busybox_applets(binary)]
    entries.append(Symlink("usr/bin/env", "/bin/busybox"))
    entries.append(File("etc/passwd", passwd.encode()))
    entries.append(File("etc/group", group.encode()))
    return entries


@functools.lru_cache(maxsize=8)
def busybox_layer(compression: Compression = "gzip") -> Layer:
    return build_layer(busybox_entries(), compression)


def _config(**kwargs: object) -> ImageConfig:
    cfg = ImageConfig(**kwargs)  # type: ignore[arg-type]
    if cfg.cmd is None and cfg.entrypoint is None:
        cfg.cmd = ["sh"]
    return cfg


@functools.lru_cache(maxsize=4)
def busybox_image(flavour: Flavour = "oci") -> Image:
    """busybox with Cmd ["sh"]."""
    return build_image([busybox_layer()], _config(), flavour)


@functools.lru_cache(maxsize=16)
def user_image(user: str) -> Image:
    """busybox whose config sets ``User`` (e.g. "1002", "www-data", "1003:1004")."""
    return build_image([busybox_layer()], _config(user=user))


@functools.lru_cache(maxsize=4)
def web_image(port: int = 80) -> Image:
    """busybox httpd in the foreground on ``port``, serving WEB_PAGE at / ."""
    page = build_layer([Dir("var/www"), File("var/www/index.html", WEB_PAGE)])
    cmd = ["/bin/busybox", "httpd", "-f", "-v", "-p", str(port), "-h", "/var/www"]
    return build_image([busybox_layer(), page], _config(cmd=cmd, exposed_ports=[f"{port}/tcp"]))


def _marker_layer(platform: Platform) -> Layer:
    return build_layer([Dir("etc"), File("etc/pycrio-platform", f"{platform}\n".encode())])


MULTIARCH_PLATFORMS = (
    Platform("linux", "arm64", "v8"),
    Platform("linux", "arm", "v99"),  # a variant no machine has
    Platform("unknown", "unknown"),  # like a buildx attestation manifest
    Platform("linux", "amd64"),
)


@functools.lru_cache(maxsize=2)
def multiarch_index(flavour: Flavour = "oci") -> Index:
    """An index over MULTIARCH_PLATFORMS, amd64 last.

    Only the linux/amd64 child is runnable (busybox); every child has
    /etc/pycrio-platform naming its platform, so a test can tell which one was picked.
    """
    children = []
    for plat in MULTIARCH_PLATFORMS:
        layers = [_marker_layer(plat)]
        if plat == Platform("linux", "amd64"):
            layers.insert(0, busybox_layer())
        children.append(build_image(layers, _config(platform=plat), flavour))
    return build_index(children, flavour=flavour)


@functools.lru_cache(maxsize=1)
def zstd_image() -> Image:
    """busybox with a zstd-compressed layer (OCI only)."""
    return build_image([busybox_layer("zstd")], _config())


# Expected view of the whiteout image: path -> content, or None for "must not exist".
WHITEOUT_EXPECTED: dict[str, bytes | None] = {
    "/data/keep": b"keep\n",
    "/data/gone": None,
    "/data/.wh.gone": None,
    "/data/dir/x": None,
    "/data/dir/y": b"y\n",
    "/data/replaced": b"v2\n",
    "/opq/old": None,
    "/opq/sub": None,
    "/opq/.wh..wh..opq": None,
    "/opq/new": b"new\n",
}


@functools.lru_cache(maxsize=1)
def whiteout_image() -> Image:
    """busybox + three layers exercising whiteouts and an opaque dir; see WHITEOUT_EXPECTED."""
    l1 = build_layer(
        [
            Dir("data"),
            File("data/keep", b"keep\n"),
            File("data/gone", b"gone\n"),
            File("data/replaced", b"v1\n"),
            Dir("data/dir"),
            File("data/dir/x", b"x\n"),
            Dir("opq"),
            File("opq/old", b"old\n"),
            Dir("opq/sub"),
            File("opq/sub/old2", b"old2\n"),
        ]
    )
    l2 = build_layer(
        [
            Dir("data"),
            Whiteout("data/gone"),
            Whiteout("data/dir"),
            Whiteout("data/replaced"),
            Opaque("opq"),
            File("opq/new", b"new\n"),
        ]
    )
    l3 = build_layer(
        [Dir("data"), File("data/replaced", b"v2\n"), Dir("data/dir"), File("data/dir/y", b"y\n")]
    )
    return build_image([busybox_layer(), l1, l2, l3], _config())


@functools.lru_cache(maxsize=2)
def many_layers_image(count: int = 120) -> Image:
    """busybox + (count - 1) one-file layers: /layers/NNN contains "NNN\\n"."""
    layers = [busybox_layer()]
    for i in range(1, count):
        layers.append(build_layer([Dir("layers"), File(f"layers/{i:03d}", f"{i:03d}\n".encode())]))
    return build_image(layers, _config())


def binary_with_libs(src: Path, dest: str) -> list[Entry]:
    """``src`` installed at ``dest`` (mode 0755) plus, if it is dynamic, the libraries ldd
    names, at the same paths as on the host (with their parent dirs)."""
    out = subprocess.run(["ldd", str(src)], capture_output=True, text=True, check=False).stdout
    libs = sorted(set(re.findall(r"(/\S+) \(0x", out)))
    entries: list[Entry] = []
    seen: set[str] = set()
    for lib in libs:
        parts = lib.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                entries.append(Dir(d))
        entries.append(File(lib, Path(lib).resolve().read_bytes(), mode=0o755))
    entries.append(File(dest, src.read_bytes(), mode=0o755))
    return entries


@functools.lru_cache(maxsize=1)
def pause_image() -> Image:
    """A pause image for sandboxes: /catatonit -P (Debian's catatonit; libs added if dynamic)."""
    layer = build_layer(binary_with_libs(CATATONIT, "catatonit"))
    return build_image([layer], ImageConfig(env=[], entrypoint=["/catatonit", "-P"], user="65535:65535"))


@functools.lru_cache(maxsize=1)
def nonewprivs_image() -> Image:
    """busybox + setuid-root /usr/local/bin/nnp printing "Effective uid: N" (x86-64 only)."""
    layer = build_layer(
        [Dir("usr/local"), Dir("usr/local/bin"), File("usr/local/bin/nnp", elf.euid_reporter(), mode=0o4755)]
    )
    return build_image([busybox_layer(), layer], _config(entrypoint=["/usr/local/bin/nnp"]))


def _nginx_script(port: int) -> str:
    # PID 1 stays this shell, whose command line says "master process" as nginx's does.
    # The server is busybox httpd exec'd through /usr/sbin/nginx, so its comm is "nginx";
    # it writes its own pid (before the exec) to /var/run/nginx.pid, as the nginx master does.
    server = (
        "echo $$ > /var/run/nginx.pid; "
        f"exec -a httpd /usr/sbin/nginx -f -v -p {port} -h /usr/share/nginx/html"
    )
    return (
        "# nginx: master process (pycrio test stand-in)\n"
        "trap 'kill $child 2>/dev/null; exit 0' TERM INT QUIT\n"
        f"/bin/sh -c '{server}' &\n"
        "child=$!\n"
        "wait $child\n"
    )


@functools.lru_cache(maxsize=4)
def nginx_like_image(port: int = 80) -> Image:
    """Stands in for nginx: a process named nginx, /var/run/nginx.pid, HTTP on ``port``."""
    layer = build_layer(
        [
            Dir("usr/share"),
            Dir("usr/share/nginx"),
            Dir("usr/share/nginx/html"),
            File("usr/share/nginx/html/index.html", WEB_PAGE),
            Symlink("usr/sbin/nginx", "/bin/busybox"),
        ]
    )
    cfg = _config(
        cmd=["/bin/sh", "-c", _nginx_script(port)], exposed_ports=[f"{port}/tcp"], stop_signal="SIGQUIT"
    )
    return build_image([busybox_layer(), layer], cfg)


@functools.lru_cache(maxsize=1)
def httpd_like_image() -> Image:
    """Stands in for httpd: logs a line containing "httpd", then serves WEB_PAGE on port 80."""
    page = build_layer([Dir("var/www"), File("var/www/index.html", WEB_PAGE)])
    script = "echo 'httpd (pycrio test stand-in) starting'; exec /bin/busybox httpd -f -v -p 80 -h /var/www"
    return build_image(
        [busybox_layer(), page], _config(cmd=["/bin/sh", "-c", script], exposed_ports=["80/tcp"])
    )


# cri-tools' test-image-predefined-group: default-user 1000 is also in group 50000.
PREDEFINED_GROUP_PASSWD = PASSWD.replace(
    f"test:x:{TEST_UID}:{TEST_GID}:test user:/home/test:/bin/sh\n",
    "default-user:x:1000:1000::/home/default-user:/bin/sh\n",
)
PREDEFINED_GROUP_GROUP = (
    GROUP.replace(f"test:x:{TEST_GID}:\n", "default-user:x:1000:\n").replace("testextra:x:1001:test\n", "")
    + "group-defined-in-image:x:50000:default-user\n"
)


@functools.lru_cache(maxsize=1)
def predefined_group_image() -> Image:
    """Like cri-tools' test-image-predefined-group: default-user 1000 in group 50000, USER 1000."""
    layer = build_layer(busybox_entries(PREDEFINED_GROUP_PASSWD, PREDEFINED_GROUP_GROUP))
    return build_image([layer], _config(user="1000"))


# ---------------------------------------------------------------------------- cached big images


def cached_image(cache_dir: Path, key: str, build: Callable[[Path], Image]) -> Image:
    """Build once into ``cache_dir/key-vN`` (an OCI layout), then load from there.

    ``build(blob_dir)`` must write its layer files into ``blob_dir``.  Concurrent builders
    race harmlessly: each builds in a private temp dir and the first rename wins.
    """
    final = cache_dir / f"{key}-v{CACHE_VERSION}"
    if (final / "index.json").exists():
        loaded = read_oci_layout(final)["image"]
        assert isinstance(loaded, Image)
        return loaded
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{os.getpid()}.{secrets.token_hex(4)}"
    blob_dir = tmp / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    try:
        image = build(blob_dir)
        for layer in image.layers:  # name the layer files by digest, as the layout wants
            assert layer.path is not None
            target = blob_dir / layer.digest.split(":", 1)[1]
            if layer.path != target:
                os.replace(layer.path, target)
        write_oci_layout(tmp, {"image": _relocated(image, blob_dir)})
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached_image(cache_dir, key, build)


def _relocated(image: Image, blob_dir: Path) -> Image:
    from dataclasses import replace

    layers = tuple(replace(lay, path=blob_dir / lay.digest.split(":", 1)[1]) for lay in image.layers)
    return replace(image, layers=layers)


def _busybox_file_layer(blob_dir: Path) -> Layer:
    return build_layer_file(busybox_entries(), blob_dir / "busybox.tmp")


def _files(count: int) -> Iterator[Entry]:
    yield Dir("files")
    for d in range((count + 99) // 100):
        yield Dir(f"files/d{d:03d}")
        for i in range(d * 100, min(count, d * 100 + 100)):
            yield File(f"files/d{d:03d}/f{i:05d}", f"file {i}\n".encode())


def many_files_image(cache_dir: Path | None = None, count: int = 20_000) -> Image:
    """busybox + one layer of ``count`` small files /files/dNNN/fNNNNN (cached on disk)."""

    def build(blob_dir: Path) -> Image:
        layer = build_layer_file(_files(count), blob_dir / "files.tmp")
        return build_image([_busybox_file_layer(blob_dir), layer], _config())

    key = f"many-files-{count}-{busybox_fingerprint()}"
    return cached_image(cache_dir or default_cache_dir(), key, build)


def big_image(cache_dir: Path | None = None, layers: int = 5, total_mb: int = 100) -> Image:
    """~``total_mb`` MB of incompressible, seeded data in ``layers`` layers (the first is busybox)."""
    per_layer = total_mb * 1024 * 1024 // (layers - 1)

    def data_layer(n: int) -> Iterator[Entry]:
        rng = random.Random(f"pycrio-big-{n}")
        yield Dir("big")
        for part in range(4):
            yield File(f"big/layer{n}-part{part}", rng.randbytes(per_layer // 4))

    def build(blob_dir: Path) -> Image:
        out = [_busybox_file_layer(blob_dir)]
        for n in range(1, layers):
            out.append(build_layer_file(data_layer(n), blob_dir / f"big{n}.tmp", level=1))
        return build_image(out, _config())

    key = f"big-{layers}x{total_mb}-{busybox_fingerprint()}"
    return cached_image(cache_dir or default_cache_dir(), key, build)
