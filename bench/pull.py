#!/usr/bin/env python3
"""Pull benchmark: pycrio's ImageService against containerd's CRI, from a local registry.

Two images, built from Debian's busybox-static by the test support code (cached
under /var/tmp/pycrio-test-images):

- ``big``: ~100 MB of incompressible data in 5 layers (large files);
- ``files``: busybox plus a layer of 20,000 small files.

Both are pushed to a private ``docker-registry`` on 127.0.0.1. Each run pulls
into an empty store (pycrio: a fresh root; containerd: a fresh daemon with its
own root, state, socket and config under /tmp, the registry configured as a
plain-HTTP host through ``config_path``/hosts.toml, the pull driven through the
CRI PullImage RPC with pycrio's own stubs). The containerd daemon is stopped by
pid after each run. The median of ``--runs`` runs is reported, with MB/s
(compressed bytes transferred) and files/s, and the ratio pycrio/containerd.

Run as root: ``.venv/bin/python bench/pull.py [--runs 3] [--no-containerd] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.containerd import CONTAINERD, Containerd
from pycrio.config import ImageConfig
from pycrio.image.registry import RegistryClient
from pycrio.image.service import ImageService
from pycrio.state.store import MetadataStore
from pycrio.storage.images import ImageStore
from pycrio.storage.layers import LayerStore
from tests.support import images as img
from tests.support.oci import Image
from tests.support.regclient import push_image_sync
from tests.support.registry import Registry, start_registry

PULL_TIMEOUT = 600.0


@dataclass
class Case:
    name: str
    ref: str
    image: Image
    blob_bytes: int
    files: int


@dataclass
class Result:
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def count_files(image: Image) -> int:
    """Entries in the image's layers (what the unpacker creates)."""
    import tarfile

    n = 0
    for layer in image.layers:
        with tarfile.open(fileobj=io.BytesIO(layer.uncompressed()), mode="r:") as tar:
            n += sum(1 for _ in tar)
    return n


# -- pycrio ---------------------------------------------------------------------------


async def pycrio_pull(workdir: Path, reg: Registry, ref: str, profile: cProfile.Profile | None) -> float:
    # A fresh, empty store per run; old ones are deleted at the very end (see fresh_dir).
    root = fresh_dir(workdir, "pycrio-")
    conf = root / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{reg.host}"\ninsecure = true\n')
    cfg = ImageConfig(registries_conf=str(conf), registries_conf_dir=str(root / "none.d"),
                      auth_file=str(root / "auth.json"), certs_dir=str(root / "certs.d"))
    db = MetadataStore(root / "meta.db")
    layers = LayerStore(root / "storage", db)
    images = ImageStore(db, layers=layers)
    service = ImageService(lambda: cfg, layers, images, client=RegistryClient(lambda: cfg))
    try:
        if profile is not None:
            profile.enable()
        start = time.perf_counter()
        await asyncio.wait_for(service.pull(ref), PULL_TIMEOUT)
        elapsed = time.perf_counter() - start
        if profile is not None:
            profile.disable()
    finally:
        await service.close()
        db.close()
    return elapsed


# -- containerd -----------------------------------------------------------------------


async def containerd_pull(workdir: Path, reg: Registry, ref: str) -> float:
    ctrd = Containerd(workdir, reg)
    try:
        await ctrd.start()
        return await ctrd.pull(ref)
    finally:
        await ctrd.close()


# -- main -----------------------------------------------------------------------------


def fresh_dir(workdir: Path, prefix: str) -> Path:
    """An empty directory for one run.

    Earlier runs' trees are not deleted until the end: ext4 skips inodes freed
    in the last 30 s when it allocates new ones, so creating 20,000 files right
    after deleting 20,000 measures that scan rather than the runtime.
    """
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))


def drop_caches() -> None:
    """Flush dirty pages so one run's writeback does not slow the next one down."""
    os.sync()


async def sh(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {out.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def bench_fs(base: Path, kind: str) -> AsyncIterator[Path]:
    """Where the stores live: a fresh loop-mounted ext4 (default) or the host's /tmp.

    The loop filesystem keeps the numbers independent of what else the host's
    disk is doing (other users' deletions make ext4 inode allocation slow for
    everyone) and of its mount options.
    """
    if kind == "host":
        yield base
        return
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(8 << 30)
    await sh("mkfs.ext4", "-q", "-F", str(image))
    await sh("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        await sh("umount", str(mnt))
        image.unlink()


async def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="pycrio-bench-", dir="/tmp"))
    reg = start_registry(base / "registry", "plain")
    try:
        async with bench_fs(base, args.fs) as workdir:
            return await measure(args, reg, workdir)
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


async def measure(args: argparse.Namespace, reg: Registry, workdir: Path) -> int:
    cache = Path(args.cache_dir)
    print(f"building/loading images (cached in {cache}) ...", flush=True)
    images = {"big": img.big_image(cache), "files": img.many_files_image(cache)}
    cases = []
    for name, image in images.items():
        push_image_sync(reg, f"bench/{name}", "latest", image)
        cases.append(Case(name, reg.ref(f"bench/{name}"), image,
                          sum(x.size for x in image.layers), count_files(image)))
    have_ctrd = not args.no_containerd and os.path.exists(CONTAINERD)
    profile = cProfile.Profile() if args.profile else None
    results: dict[tuple[str, str], Result] = {}
    for case in cases:
        # One untimed pull each, so the registry's files are in the page cache for both.
        await pycrio_pull(workdir, reg, case.ref, None)
        if have_ctrd:
            await containerd_pull(workdir, reg, case.ref)
        for i in range(args.runs):
            # Alternate who goes first, so neither always inherits the other's writeback.
            order = ["pycrio", "containerd"] if i % 2 == 0 else ["containerd", "pycrio"]
            for rt in order:
                if rt == "containerd" and not have_ctrd:
                    continue
                drop_caches()
                if rt == "pycrio":
                    t = await pycrio_pull(workdir, reg, case.ref, profile)
                else:
                    t = await containerd_pull(workdir, reg, case.ref)
                results.setdefault((rt, case.name), Result()).times.append(t)
                print(f"  {case.name:5s} run {i + 1}: {rt:10s} {t:6.2f} s", flush=True)
    print()
    print(f"{'image':6s} {'runtime':10s} {'median s':>9s} {'MB/s':>8s} {'files/s':>9s} {'ratio':>7s}")
    for case in cases:
        mb = case.blob_bytes / 1e6
        base = results.get(("containerd", case.name))
        for rt in ("pycrio", "containerd"):
            r = results.get((rt, case.name))
            if r is None:
                continue
            ratio = f"{r.median / base.median:6.2f}x" if base is not None and rt == "pycrio" else ""
            print(f"{case.name:6s} {rt:10s} {r.median:9.2f} {mb / r.median:8.1f} "
                  f"{case.files / r.median:9.0f} {ratio:>7s}")
    big, files = cases
    print(f"\n(big: {big.blob_bytes / 1e6:.1f} MB in {len(big.image.layers)} layers, "
          f"{big.files} entries; files: {files.blob_bytes / 1e6:.1f} MB, {files.files} entries)")
    if profile is not None:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-containerd", action="store_true", help="only time pycrio")
    parser.add_argument("--profile", action="store_true", help="cProfile pycrio's event-loop thread")
    parser.add_argument("--cache-dir", default=str(img.default_cache_dir()))
    parser.add_argument("--fs", choices=("loop", "host"), default="loop",
                        help="stores on a fresh loop-mounted ext4 (default) or on the host's /tmp")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/pull.py must run as root (unpacking keeps owners and device nodes)", file=sys.stderr)
        return 2
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
