"""LayerStore: ids, writer life cycle, concurrency, back-pressure, GC and crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.state.store import MetadataStore
from pycrio.storage.common import LayerError, chain_id_of
from pycrio.storage.layers import LayerStore, chain_ids
from tests.unit.test_storage_support import MEDIA, compress, digest, file, symlink, tar_bytes, unpack


def layer_dirs(store: LayerStore) -> list[str]:
    return sorted(n for n in os.listdir(store.overlay_dir) if n != "l")


def test_chain_ids() -> None:
    a, b, c = (digest(x) for x in (b"a", b"b", b"c"))
    ids = chain_ids([a, b, c])
    assert ids[0] == a
    assert ids[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert ids[2] == "sha256:" + hashlib.sha256(f"{ids[1]} {c}".encode()).hexdigest()
    assert chain_id_of(ids[1], c) == ids[2]
    assert chain_ids([]) == []
    with pytest.raises(InvalidArgument):
        chain_ids(["md5:abc"])


def test_link_names(layers: LayerStore) -> None:
    names = {layers.link_name(digest(bytes([i]))) for i in range(200)}
    assert len(names) == 200
    for n in names:
        assert len(n) == 26 and n.isalnum() and n.upper() == n
    assert layers.link_name(digest(b"x")) == layers.link_name(digest(b"x"))


async def test_store_queries_and_links(layers: LayerStore) -> None:
    raw1 = tar_bytes([file("one", b"1" * 100)])
    raw2 = tar_bytes([file("two", b"2" * 50), file("three", b"3")])
    i1 = await unpack(layers, raw1)
    i2 = await unpack(layers, raw2, parent=i1.chain_id)
    assert i2.parent == i1.chain_id and i2.chain_id == chain_ids([i1.diff_id, i2.diff_id])[1]
    assert layers.has(i1.chain_id) and layers.get(i2.chain_id) == i2
    assert [x.chain_id for x in layers.list()] == [i1.chain_id, i2.chain_id]
    assert layers.usage() == (100 + 51, 1 + 2 + 2)
    link = layers.link_dir / layers.link_name(i2.chain_id)
    assert os.readlink(link) == f"../{i2.chain_id[7:]}/diff"
    assert (link / "two").read_bytes() == b"2" * 50
    assert layers.get(digest(b"nope")) is None


async def test_same_layer_twice_concurrently(layers: LayerStore) -> None:
    raw = tar_bytes([file(f"f{i}", os.urandom(20000)) for i in range(30)])
    results = await asyncio.gather(unpack(layers, raw), unpack(layers, raw), unpack(layers, raw))
    assert results[0] == results[1] == results[2]
    assert layer_dirs(layers) == [digest(raw)[7:]]
    assert os.listdir(layers.staging_dir) == []


async def test_parallel_layers(layers: LayerStore) -> None:
    raws = [tar_bytes([file(f"l{n}/f{i}", os.urandom(5000)) for i in range(50)]) for n in range(6)]
    infos = await asyncio.gather(*(unpack(layers, r, kind) for r, kind in
                                   zip(raws, ["gzip", "zstd", "none"] * 2, strict=True)))
    assert len({i.chain_id for i in infos}) == 6
    assert len(layer_dirs(layers)) == 6


async def test_backpressure_bounds_the_queue(tmp_path: Path, meta: MetadataStore) -> None:
    store = LayerStore(tmp_path / "bp", meta, queue_bytes=1 << 20)
    raw = tar_bytes([file(f"f{i}", os.urandom(1 << 20)) for i in range(24)])
    chain = digest(raw)
    chunk = 256 * 1024
    async with store.begin(chain, None, MEDIA["none"], digest(raw), chain) as w:
        worst = 0
        for i in range(0, len(raw), chunk):
            await w.feed(raw[i : i + chunk])
            worst = max(worst, w._fed - w._consumed)
        await w.commit()
    assert worst <= (1 << 20) + chunk


async def test_error_surfaces_at_feed_before_the_end(tmp_path: Path, meta: MetadataStore) -> None:
    store = LayerStore(tmp_path / "early", meta, queue_bytes=256 * 1024)
    raw = tar_bytes([symlink("s", "/etc"), file("s/passwd", b"x"), file("pad", os.urandom(16 << 20))])
    chain = digest(raw)
    fed = 0
    with pytest.raises(LayerError, match="symlink"):
        async with store.begin(chain, None, MEDIA["none"], "", chain) as w:
            for i in range(0, len(raw), 64 * 1024):
                await w.feed(raw[i : i + 64 * 1024])
                fed += 64 * 1024
                await asyncio.sleep(0)
            await w.commit()
    assert fed < len(raw) // 2
    assert os.listdir(store.staging_dir) == []


async def test_writer_life_cycle(layers: LayerStore) -> None:
    raw = tar_bytes([file("a", b"1")])
    blob = compress(raw, "gzip")
    chain = digest(raw)
    # abort: idempotent, removes staging, commit afterwards refused.
    w = layers.begin(chain, None, MEDIA["gzip"], digest(blob), chain)
    await w.feed(blob[:10])
    await w.abort()
    await w.abort()
    assert os.listdir(layers.staging_dir) == []
    with pytest.raises(FailedPrecondition):
        await w.commit()
    with pytest.raises(FailedPrecondition):
        await w.feed(b"x")
    assert not layers.has(chain)
    # commit twice returns the same info; feed after commit refused; abort after commit is a no-op.
    w = layers.begin(chain, None, MEDIA["gzip"], digest(blob), chain)
    await w.feed(blob)
    info = await w.commit()
    assert await w.commit() == info
    with pytest.raises(FailedPrecondition):
        await w.feed(b"x")
    await w.abort()
    assert layers.has(chain) and layers.diff_path(chain).joinpath("a").exists()
    # the context manager aborts when the block raises
    other = tar_bytes([file("b", b"2")])
    with pytest.raises(RuntimeError):
        async with layers.begin(digest(other), None, MEDIA["none"], "", digest(other)) as w2:
            await w2.feed(other[:700])
            raise RuntimeError("download failed")
    assert os.listdir(layers.staging_dir) == []
    assert not layers.has(digest(other))


async def test_cancelled_commit_cleans_up(layers: LayerStore) -> None:
    raw = tar_bytes([file("a", os.urandom(1 << 20))])
    chain = digest(raw)
    w = layers.begin(chain, None, MEDIA["none"], "", chain)
    await w.feed(raw[:5000])
    task = asyncio.create_task(w.commit())  # the stream is cut: the worker sees EOF mid-entry
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.abort()
    assert os.listdir(layers.staging_dir) == []
    assert not layers.has(chain)


async def test_one_huge_chunk(layers: LayerStore) -> None:
    raw = tar_bytes([file(f"f{i}", os.urandom(300_000) + b"z" * 300_000) for i in range(20)])
    for kind in ("gzip", "zstd", "none"):
        info = await unpack(layers, raw, kind, chunk=1 << 30)  # the whole blob in one feed
        assert info.size == 20 * 600_000
        layers.mark_referenced([info.chain_id])
        assert await layers.remove_unreferenced(set()) == 1


async def test_idle_writer_gives_up(tmp_path: Path, meta: MetadataStore) -> None:
    store = LayerStore(tmp_path / "idle", meta, idle_timeout=0.2)
    raw = tar_bytes([file("a", b"1")])
    chain = digest(raw)
    w = store.begin(chain, None, MEDIA["none"], "", chain)
    await w.feed(raw[:100])
    await asyncio.sleep(0.5)
    with pytest.raises(LayerError, match="no data"):
        await w.commit()
    assert os.listdir(store.staging_dir) == []


async def test_sync_option(tmp_path: Path, meta: MetadataStore) -> None:
    store = LayerStore(tmp_path / "sync", meta, sync=True)
    info = await unpack(store, tar_bytes([file("a", b"durable")]))
    assert (store.diff_path(info.chain_id) / "a").read_bytes() == b"durable"


async def test_remove_unreferenced_respects_keep_holds_and_fresh(tmp_path: Path, meta: MetadataStore) -> None:
    store = LayerStore(tmp_path / "gc", meta, fresh_grace=3600)
    a, b, c, d = [await unpack(store, tar_bytes([file(n, n.encode())])) for n in "abcd"]
    # Just committed, no image yet: protected by the fresh-layer grace.
    assert await store.remove_unreferenced(set()) == 0
    store.mark_referenced([a.chain_id, b.chain_id, c.chain_id, d.chain_id])
    with store.hold([c.chain_id]):
        removed = await store.remove_unreferenced({a.chain_id})
    assert removed == 2  # b and d; a is kept, c is held
    assert {i.chain_id for i in store.list()} == {a.chain_id, c.chain_id}
    assert layer_dirs(store) == sorted([a.chain_id[7:], c.chain_id[7:]])
    assert not (store.link_dir / store.link_name(b.chain_id)).exists()
    assert os.listdir(store.trash_dir) == []
    assert await store.remove_unreferenced({a.chain_id}) == 1  # c, no longer held
    assert store.retire([digest(b"unknown")]) == []


async def test_fresh_grace_expires(tmp_path: Path, meta: MetadataStore) -> None:
    store = LayerStore(tmp_path / "gc", meta, fresh_grace=0.0)
    await unpack(store, tar_bytes([file("a")]))
    await asyncio.sleep(0.01)
    assert await store.remove_unreferenced(set()) == 1


async def test_in_flight_layer_is_not_collected(layers: LayerStore) -> None:
    raw = tar_bytes([file("a", b"1")])
    chain = digest(raw)
    w = layers.begin(chain, None, MEDIA["none"], "", chain)
    assert chain in layers.protected()
    await w.feed(raw)
    await w.commit()
    layers.mark_referenced([chain])
    assert chain not in layers.protected()


async def test_recovery_at_start(tmp_path: Path) -> None:
    meta = MetadataStore(tmp_path / "meta.db")
    store = LayerStore(tmp_path / "storage", meta)
    good = await unpack(store, tar_bytes([file("good", b"g")]))
    gone = await unpack(store, tar_bytes([file("gone", b"x")]))
    # A crash mid-unpack: a staging dir with a read-only subdirectory.
    half = store.staging_dir / "abc123" / "diff" / "ro"
    half.mkdir(parents=True)
    (half / "f").write_text("partial")
    os.chmod(half, 0o500)
    # A crash between rename and the row insert: a layer directory with no row.
    orphan = store.overlay_dir / digest(b"orphan")[7:]
    (orphan / "diff").mkdir(parents=True)
    (orphan / "diff" / "x").write_text("x")
    # A layer whose directory vanished, a dangling link, a wrong link, trash left over.
    os.rename(store.overlay_dir / gone.chain_id[7:], tmp_path / "moved-away")
    os.symlink("../nothing/diff", store.link_dir / "AAAAAAAAAAAAAAAAAAAAAAAAAA")
    os.unlink(store.link_dir / store.link_name(good.chain_id))
    os.symlink("../elsewhere/diff", store.link_dir / store.link_name(good.chain_id))
    (store.trash_dir / "old").mkdir()
    meta.close()

    meta2 = MetadataStore(tmp_path / "meta.db")
    try:
        store2 = LayerStore(tmp_path / "storage", meta2)
        assert os.listdir(store2.staging_dir) == []
        assert os.listdir(store2.trash_dir) == []
        assert layer_dirs(store2) == [good.chain_id[7:]]
        assert [i.chain_id for i in store2.list()] == [good.chain_id]
        assert sorted(os.listdir(store2.link_dir)) == [store2.link_name(good.chain_id)]
        assert (store2.link_dir / store2.link_name(good.chain_id) / "good").read_bytes() == b"g"
    finally:
        meta2.close()


_CHILD = textwrap.dedent("""
    import asyncio, hashlib, os, sys
    from pathlib import Path
    from pycrio.state.store import MetadataStore
    from pycrio.storage.layers import LayerStore

    async def main() -> None:
        root = Path(sys.argv[1])
        raw = Path(sys.argv[2]).read_bytes()
        store = LayerStore(root / "storage", MetadataStore(root / "meta.db"))
        chain = "sha256:" + hashlib.sha256(raw).hexdigest()
        w = store.begin(chain, None, "application/vnd.oci.image.layer.v1.tar", "", chain)
        await w.feed(raw[: len(raw) // 2])
        while not any(os.scandir(next(store.staging_dir.iterdir()) / "diff")):
            await asyncio.sleep(0.01)
        print("half", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
""")


async def test_daemon_killed_mid_unpack_leaves_nothing_visible(tmp_path: Path) -> None:
    raw = tar_bytes([file(f"f{i}", os.urandom(100_000)) for i in range(40)])
    (tmp_path / "layer.tar").write_bytes(raw)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, str(tmp_path), str(tmp_path / "layer.tar"),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"half"
        assert os.listdir(tmp_path / "storage" / "staging")  # the half-made layer is there ...
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    meta = MetadataStore(tmp_path / "meta.db")
    try:
        store = LayerStore(tmp_path / "storage", meta)  # ... and the restart removes it
        assert os.listdir(store.staging_dir) == []
        assert not store.has(digest(raw))
        assert layer_dirs(store) == []
        # The same layer unpacks fine afterwards.
        info = await unpack(store, raw, "none")
        assert info.files == 40
    finally:
        meta.close()


def test_storage_root_with_option_separators_refused(tmp_path: Path, meta: MetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        LayerStore(tmp_path / "a,b", meta)
    with pytest.raises(InvalidArgument):
        LayerStore(tmp_path / "a:b", meta)


async def test_layer_error_names_layer_and_entry(layers: LayerStore) -> None:
    raw = tar_bytes([file("../x")])
    with pytest.raises(LayerError) as ei:
        await unpack(layers, raw)
    assert ei.value.chain_id == digest(raw)
    assert ei.value.entry == "../x"
    assert "'../x'" in str(ei.value) and digest(raw) in str(ei.value)


async def test_abort_while_commit_waits(layers: LayerStore) -> None:
    raw = tar_bytes([file("a", os.urandom(1 << 20))])
    chain = digest(raw)
    w = layers.begin(chain, None, MEDIA["none"], "", chain)
    await w.feed(raw)
    commit = asyncio.create_task(w.commit())
    await asyncio.sleep(0)
    await w.abort()
    with pytest.raises((FailedPrecondition, LayerError)):
        await commit
    assert os.listdir(layers.staging_dir) == []
    assert not layers.has(chain)
