"""LayerStore: unpacked layers, one directory per chain ID, shared by every image.

Layout under ``root`` (``<config.root>/storage``)::

    overlay/<chain hex>/diff      the layer's files (an overlay lower directory)
    overlay/l/<26 chars>          symlink -> ../<chain hex>/diff (short lowerdir names)
    staging/<random>/diff         a layer being unpacked
    trash/<...>                   removed layers waiting to be deleted
    empty/                        lower directory of images without layers

Crash safety: a layer is unpacked under ``staging/``, renamed into
``overlay/`` and only then recorded in SQLite. At start, ``staging/`` and
``trash/`` are emptied, layer directories without a row are deleted, rows
without a directory are forgotten, and the short links are repaired.

Garbage collection never removes a layer that is being written, that a caller
holds (:meth:`LayerStore.hold`), or that was committed but not yet referenced
by an image (:meth:`LayerStore.mark_referenced`, called by ``ImageStore.put``)
within ``fresh_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from pycrio.errors import InvalidArgument
from pycrio.state.store import MetadataStore
from pycrio.storage.common import (
    STORAGE_SCHEMA,
    LayerError,
    LayerInfo,
    chain_id_of,
    chain_ids,
    check_blob_digest,
    check_sha256,
    layer_dir_name,
)
from pycrio.storage.common import link_name as _link_name
from pycrio.storage.decompress import compression_of
from pycrio.storage.unpack import UnpackLimits
from pycrio.storage.writer import LayerWriter, UnpackResult

__all__ = ["LayerError", "LayerInfo", "LayerStore", "LayerWriter", "chain_ids"]

log = logging.getLogger("pycrio.storage")

DEFAULT_MAX_LAYER_BYTES = 64 << 30  # uncompressed bytes per layer
DEFAULT_MAX_ENTRIES = 2_000_000  # tar entries per layer
_FORBIDDEN_ROOT_CHARS = (",", ":", "\\", "\n")


def check_root(root: Path) -> Path:
    """Storage roots must be absolute and usable in overlay mount options."""
    root = Path(os.path.abspath(root))
    if any(c in str(root) for c in _FORBIDDEN_ROOT_CHARS):
        raise InvalidArgument(f"storage root {str(root)!r} may not contain ',', ':', '\\\\' or newlines")
    return root


class LayerStore:
    def __init__(
        self,
        root: Path,
        store: MetadataStore,
        *,
        max_layer_bytes: int = DEFAULT_MAX_LAYER_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        gzip_backend: str | None = None,
        queue_bytes: int = 16 << 20,
        sync: bool = False,
        fresh_grace: float = 3600.0,
        idle_timeout: float = 900.0,
    ) -> None:
        self.root = check_root(root)
        self.store = store
        self.limits = UnpackLimits(max_bytes=max_layer_bytes, max_entries=max_entries)
        self.gzip_backend = gzip_backend
        self.queue_bytes = queue_bytes
        self.sync = sync
        self.fresh_grace = fresh_grace
        self.idle_timeout = idle_timeout
        self.overlay_dir = self.root / "overlay"
        self.link_dir = self.overlay_dir / "l"
        self.staging_dir = self.root / "staging"
        self.trash_dir = self.root / "trash"
        self.empty_dir = self.root / "empty"
        for d in (self.root, self.overlay_dir, self.link_dir, self.empty_dir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
        for d in (self.staging_dir, self.trash_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        store.register(STORAGE_SCHEMA)
        self._holds: dict[str, int] = {}
        self._fresh: dict[str, float] = {}
        self._trash_lock = asyncio.Lock()
        self._recover()

    # -- queries ----------------------------------------------------------------------
    def has(self, chain_id: str) -> bool:
        row = self.store.query_one("SELECT 1 FROM storage_layers WHERE chain_id = ?", (chain_id,))
        return row is not None

    def get(self, chain_id: str) -> LayerInfo | None:
        row = self.store.query_one(
            f"SELECT {_COLUMNS} FROM storage_layers WHERE chain_id = ?", (chain_id,)
        )
        return _info(row) if row is not None else None

    def list(self) -> builtins.list[LayerInfo]:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM storage_layers ORDER BY created")
        return [_info(r) for r in rows]

    def usage(self) -> tuple[int, int]:
        """Bytes and inodes of all layers, from what was recorded at unpack time (cheap)."""
        row = self.store.query_one(
            "SELECT COALESCE(SUM(size), 0), COALESCE(SUM(files + 1), 0) FROM storage_layers"
        )
        assert row is not None
        return int(row[0]), int(row[1])

    def diff_path(self, chain_id: str) -> Path:
        return self.overlay_dir / layer_dir_name(chain_id) / "diff"

    def link_name(self, chain_id: str) -> str:
        return _link_name(chain_id)

    def link_path(self, chain_id: str) -> Path:
        return self.link_dir / _link_name(chain_id)

    # -- writing ----------------------------------------------------------------------
    def begin(
        self, chain_id: str, parent: str | None, media_type: str, blob_digest: str, expected_diff_id: str
    ) -> LayerWriter:
        """Start unpacking one layer; must be called from the event loop."""
        check_sha256(chain_id, "chain ID")
        check_sha256(expected_diff_id, "diff ID")
        if parent is not None:
            check_sha256(parent, "parent chain ID")
        check_blob_digest(blob_digest)
        if chain_id_of(parent, expected_diff_id) != chain_id:
            raise InvalidArgument(
                f"chain ID {chain_id} does not follow from parent {parent} and diff ID {expected_diff_id}"
            )
        compression = compression_of(media_type)
        if compression is None:
            raise InvalidArgument(f"layer {chain_id}: unsupported layer media type {media_type!r}")
        staging = self.staging_dir / secrets.token_hex(12)
        (staging / "diff").mkdir(mode=0o755, parents=True)
        self._hold_one(chain_id)
        try:
            return LayerWriter(
                chain_id=chain_id,
                parent=parent,
                media_type=media_type,
                compression=compression,
                blob_digest=blob_digest,
                expected_diff_id=expected_diff_id,
                staging=staging,
                limits=self.limits,
                install=self._install,
                release=self._release_one,
                queue_bytes=self.queue_bytes,
                gzip_backend=self.gzip_backend,
                idle_timeout=self.idle_timeout,
                sync=self.sync,
            )
        except BaseException:
            self._release_one(chain_id)
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _install(self, writer: LayerWriter, result: UnpackResult) -> tuple[LayerInfo, bool]:
        """Rename staging into place and record it. Runs on the loop with no await inside,
        so concurrent writers of the same chain ID cannot interleave here."""
        existing = self.get(writer.chain_id)
        if existing is not None:
            return existing, False
        final = self.overlay_dir / layer_dir_name(writer.chain_id)
        if final.exists() or final.is_symlink():
            self._to_trash(final)  # leftover without a row
        os.rename(writer.staging, final)
        try:
            self._make_link(writer.chain_id)
            info = LayerInfo(
                chain_id=writer.chain_id,
                diff_id=result.diff_id,
                parent=writer.parent,
                size=result.size,
                files=result.files,
                blob_digest=writer.blob_digest,
            )
            self.store.execute(
                "INSERT INTO storage_layers(chain_id, diff_id, parent, size, files, blob_digest,"
                " media_type, created) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (info.chain_id, info.diff_id, info.parent, info.size, info.files, info.blob_digest,
                 writer.media_type, time.time()),
            )
        except BaseException:
            self._to_trash(final)
            with contextlib.suppress(OSError):
                os.unlink(self.link_path(writer.chain_id))
            raise
        self._fresh[writer.chain_id] = time.monotonic()
        return info, True

    def _make_link(self, chain_id: str) -> None:
        link = self.link_path(chain_id)
        target = f"../{layer_dir_name(chain_id)}/diff"
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                return
        tmp = self.link_dir / f".tmp-{secrets.token_hex(6)}"
        os.symlink(target, tmp)
        os.replace(tmp, link)

    # -- holds and references ------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, chain_ids: Iterable[str]) -> Iterator[None]:
        """Keep these layers from garbage collection while the block runs (e.g. a pull that
        found them present and will reference them)."""
        ids = list(chain_ids)
        for c in ids:
            self._hold_one(c)
        try:
            yield
        finally:
            for c in ids:
                self._release_one(c)

    def _hold_one(self, chain_id: str) -> None:
        self._holds[chain_id] = self._holds.get(chain_id, 0) + 1

    def _release_one(self, chain_id: str) -> None:
        n = self._holds.get(chain_id, 0) - 1
        if n > 0:
            self._holds[chain_id] = n
        else:
            self._holds.pop(chain_id, None)

    def mark_referenced(self, chain_ids: Iterable[str]) -> None:
        """An image now references these layers: they no longer need the fresh-layer grace."""
        for c in chain_ids:
            self._fresh.pop(c, None)

    def protected(self) -> set[str]:
        now = time.monotonic()
        for c, t in list(self._fresh.items()):
            if now - t > self.fresh_grace:
                del self._fresh[c]
        return set(self._holds) | set(self._fresh)

    # -- removal ------------------------------------------------------------------------
    def retire(self, chain_ids: Iterable[str]) -> builtins.list[str]:
        """Forget layers now (rows deleted, directories moved to trash); returns those retired.
        Held, in-flight and fresh layers are skipped. Call :meth:`empty_trash` afterwards."""
        protected = self.protected()
        victims = [c for c in dict.fromkeys(chain_ids) if c not in protected]
        if not victims:
            return []
        gone: builtins.list[str] = []
        with self.store.transaction() as conn:
            for c in victims:
                if conn.execute("DELETE FROM storage_layers WHERE chain_id = ?", (c,)).rowcount:
                    gone.append(c)
        for c in gone:
            with contextlib.suppress(OSError):
                os.unlink(self.link_path(c))
            self._to_trash(self.overlay_dir / layer_dir_name(c))
        return gone

    async def remove_unreferenced(self, keep: set[str]) -> int:
        """Remove every layer not in ``keep`` (the layers images use); returns how many."""
        rows = self.store.query("SELECT chain_id FROM storage_layers")
        gone = self.retire(r[0] for r in rows if r[0] not in keep)
        await self.empty_trash()
        return len(gone)

    async def empty_trash(self) -> None:
        async with self._trash_lock:
            names = os.listdir(self.trash_dir)
            if names:
                await asyncio.to_thread(self._empty_trash_sync, names)

    def _empty_trash_sync(self, names: builtins.list[str]) -> None:
        for name in names:
            path = self.trash_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _to_trash(self, path: Path) -> None:
        if not (path.exists() or path.is_symlink()):
            return
        os.rename(path, self.trash_dir / f"{path.name}-{secrets.token_hex(6)}")

    # -- start-up recovery -----------------------------------------------------------------
    def _recover(self) -> None:
        """Undo what a crash may have left: see the module docstring."""
        for d in (self.staging_dir, self.trash_dir):
            for name in os.listdir(d):
                path = d / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        path.unlink()
        rows = {r[0] for r in self.store.query("SELECT chain_id FROM storage_layers")}
        present = set()
        for name in os.listdir(self.overlay_dir):
            if name == "l":
                continue
            path = self.overlay_dir / name
            chain = "sha256:" + name
            if chain in rows and (path / "diff").is_dir() and not path.is_symlink():
                present.add(chain)
                continue
            log.warning("removing layer directory %s: not recorded (interrupted unpack or removal)", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
        missing = rows - present
        if missing:
            log.warning("forgetting %d layer(s) whose directory is gone: %s", len(missing), sorted(missing))
            with self.store.transaction() as conn:
                conn.executemany("DELETE FROM storage_layers WHERE chain_id = ?", [(c,) for c in missing])
        wanted = {_link_name(c): f"../{layer_dir_name(c)}/diff" for c in present}
        for name in os.listdir(self.link_dir):
            link = self.link_dir / name
            try:
                ok = wanted.get(name) == os.readlink(link)
            except OSError:
                ok = False
            if not ok:
                if link.is_dir() and not link.is_symlink():
                    shutil.rmtree(link, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        link.unlink()
        for c in present:
            self._make_link(c)


_COLUMNS = "chain_id, diff_id, parent, size, files, blob_digest"


def _info(r: sqlite3.Row) -> LayerInfo:
    return LayerInfo(chain_id=r[0], diff_id=r[1], parent=r[2], size=int(r[3]), files=int(r[4]),
                     blob_digest=r[5])
