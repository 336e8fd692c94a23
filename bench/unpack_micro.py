"""Micro-benchmark of pycrio's layer unpack (a benchmark, not a test).

Every timed run starts on an empty directory after ``sync``; the contenders of a
case run interleaved, round by round, so that noise from other work on the
machine spreads over all of them.

Measures, on data generated locally:
  * a ~100 MB layer of large files (gzip): MB/s of uncompressed content,
  * a layer of 20,000 small files (gzip): files/s,
  * five ~20 MB layers unpacked concurrently (the parallel-pull case),
each through the real LayerStore pipeline (feed -> worker thread -> decompress
-> sha256 -> untar -> rename -> SQLite), with the stdlib zlib and with ISA-L,
plus decompression alone and GNU ``tar -xzf`` on the same blob as a reference.

    .venv/bin/python bench/unpack_micro.py [--runs 3] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from pycrio.state.store import MetadataStore
from pycrio.storage.decompress import BlockSource, gzip_backends
from pycrio.storage.layers import LayerStore

GZIP_MT = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_MT = "application/vnd.oci.image.layer.v1.tar+zstd"
CHUNK = 64 * 1024  # what an HTTP client typically hands over


def _gzip(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip -6, like most registries' layers
    return c.compress(raw) + c.flush()


_WORDS = [b"lib", b"usr", b"share", b"the", b"error", b"config", b"value", b"int", b"return", b"self",
          b"struct", b"static", b"const", b"char", b"void", b"if", b"else", b"for", b"while", b"0x1f"]


def _semi_random(rng: random.Random, n: int) -> bytes:
    """Data that compresses about 3:1 with gzip -6, like a typical image layer
    (machine code and tables mixed with text)."""
    out = bytearray()
    while len(out) < n:
        out += rng.randbytes(700)
        out += b" ".join(rng.choices(_WORDS, k=300)) + b"\n"
    return bytes(out[:n])


def make_big_layer(rng: random.Random, total: int = 100 << 20, files: int = 10) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        d = tarfile.TarInfo("data")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        tf.addfile(d)
        for i in range(files):
            data = _semi_random(rng, total // files)
            ti = tarfile.TarInfo(f"data/blob{i}.bin")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def make_small_layer(rng: random.Random, files: int = 20_000, dirs: int = 200) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i in range(files):  # grouped by directory, as tar walks a tree
            data = _semi_random(rng, rng.randrange(100, 3000))
            ti = tarfile.TarInfo(f"usr/share/d{i * dirs // files}/file{i}.txt")
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
            if i % (files // dirs) == 0:
                d = tarfile.TarInfo(os.path.dirname(ti.name))
                d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tf.addfile(d)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def digest(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


async def unpack_layers(root: Path, layers: list[tuple[bytes, bytes, str]], backend: str) -> float:
    """Unpack layers (raw tar, blob, media type) concurrently into a fresh store; seconds."""
    clean(root)
    store = MetadataStore(root / "meta.db")
    ls = LayerStore(root / "storage", store, gzip_backend=backend)

    async def one(raw: bytes, blob: bytes, mt: str) -> None:
        diff = digest(raw)
        w = ls.begin(diff, None, mt, digest(blob), diff)
        async with w:
            view = memoryview(blob)
            for i in range(0, len(blob), CHUNK):
                await w.feed(bytes(view[i : i + CHUNK]))
            await w.commit()

    t = time.perf_counter()
    await asyncio.gather(*(one(*layer) for layer in layers))
    dt = time.perf_counter() - t
    store.close()
    return dt


def decompress_only(blob: bytes, backend: str) -> float:
    chunks = [blob[i : i + CHUNK] for i in range(0, len(blob), CHUNK)]
    it = iter(chunks)
    src = BlockSource(lambda: next(it, b""), "gzip", 1 << 40, gzip_backend=backend)
    t = time.perf_counter()
    while src.read_block():
        pass
    return time.perf_counter() - t


def clean(path: Path) -> None:
    """Remove the previous run's output and let the disk settle (outside the timing)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()


def gnu_tar(blob_path: Path, out: Path) -> float:
    clean(out)
    t = time.perf_counter()
    subprocess.run(["tar", "-xzf", str(blob_path), "-C", str(out), "--same-owner", "-p"], check=True)
    return time.perf_counter() - t


def best(fn: Callable[[], float], runs: int) -> tuple[float, float]:
    times = [fn() for _ in range(runs)]
    return min(times), statistics.median(times)


Contender = tuple[str, Callable[[], float]]


def interleaved(contenders: list[Contender], runs: int) -> dict[str, tuple[float, float]]:
    """Run every contender once per round, rotating the order, so load from elsewhere on
    the machine hits them alike; (best, median) per contender."""
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for r in range(runs):
        k = r % len(contenders)
        for name, fn in contenders[k:] + contenders[:k]:
            times[name].append(fn())
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pycrio-unpack-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    try:
        print("generating layers ...", file=sys.stderr)
        big_raw = make_big_layer(rng)
        big_gz = _gzip(big_raw)
        small_raw = make_small_layer(rng)
        small_gz = _gzip(small_raw)
        par_raw = [make_big_layer(rng, total=20 << 20, files=4) for _ in range(5)]
        par_gz = [_gzip(r) for r in par_raw]
        (work / "big.tar.gz").write_bytes(big_gz)
        (work / "small.tar.gz").write_bytes(small_gz)
        mb = len(big_raw) / 1e6
        print(f"big layer: {mb:.0f} MB tar, {len(big_gz) / 1e6:.0f} MB gzip; "
              f"small layer: 20000 files, {len(small_raw) / 1e6:.0f} MB tar; "
              f"parallel: 5 x {len(par_raw[0]) / 1e6:.0f} MB")
        print(f"{'case':<44}{'best s':>9}{'median s':>10}{'rate':>16}")

        def row(name: str, res: tuple[float, float], amount: float, unit: str) -> None:
            print(f"{name:<44}{res[0]:>9.3f}{res[1]:>10.3f}{amount / res[0]:>12.0f} {unit}")

        def pycrio(layers: list[tuple[bytes, bytes, str]], backend: str) -> Callable[[], float]:
            return lambda: asyncio.run(unpack_layers(work / "s", layers, backend))

        for backend in gzip_backends():
            res = best(functools.partial(decompress_only, big_gz, backend), args.runs)
            row(f"gunzip only, 100 MB ({backend})", res, mb, "MB/s")
        for label, raw, gz, blob_file, amount, unit in (
            ("100 MB", big_raw, big_gz, "big.tar.gz", mb, "MB/s"),
            ("20000 files", small_raw, small_gz, "small.tar.gz", 20000.0, "files/s"),
        ):
            contenders = [(f"pycrio unpack {label} gzip ({b})", pycrio([(raw, gz, GZIP_MT)], b))
                          for b in gzip_backends()]
            tar = functools.partial(gnu_tar, work / blob_file, work / "t")
            contenders.append((f"GNU tar -xzf {label}", tar))
            for name, res in interleaved(contenders, args.runs).items():
                row(name, res, amount, unit)
        par = [(r, g, GZIP_MT) for r, g in zip(par_raw, par_gz, strict=True)]
        for backend in gzip_backends():
            res = best(pycrio(par, backend), args.runs)
            row(f"pycrio 5 layers in parallel ({backend})", res, sum(map(len, par_raw)) / 1e6, "MB/s")
        try:
            import zstandard

            big_zst = zstandard.ZstdCompressor(level=3).compress(big_raw)
            res = best(pycrio([(big_raw, big_zst, ZSTD_MT)], "isal"), args.runs)
            row("pycrio unpack 100 MB zstd", res, mb, "MB/s")
        except ImportError:  # pragma: no cover
            pass
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    os.umask(0o022)
    main()
