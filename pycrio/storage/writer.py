"""LayerWriter: stream one layer blob from the network into a staging directory.

The event loop feeds compressed chunks; a dedicated worker thread pulls them
from a queue, decompresses, hashes (diff ID and blob digest) and unpacks as
they arrive. The queue is bounded in bytes, so a fast network waits for a slow
disk instead of filling memory. An error in the worker (hostile entry, corrupt
stream) surfaces at the next ``feed`` so the download stops early, and the
worker removes the staging directory itself: a failed layer leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pycrio.errors import FailedPrecondition, Internal, PycrioError, ResourceExhausted
from pycrio.storage import tarstream
from pycrio.storage.common import LayerError, LayerInfo
from pycrio.storage.decompress import BlockPipe, BlockSource, DecompressError
from pycrio.storage.unpack import Unpacker, UnpackError, UnpackLimits

log = logging.getLogger("pycrio.storage")

# Chunks smaller than this are gathered before they are queued (fewer thread hand-offs).
# OS errors caused by the layer's content itself (a name too long, too many links).
_LAYER_ERRNOS = (errno.ENAMETOOLONG, errno.EMLINK)
_COALESCE = 256 * 1024
_COALESCE_DELAY = 0.5  # seconds a small chunk may wait for company
_EOF = None


class _Abort:
    """Queue item that stops the worker."""


_ABORT = _Abort()


class _Aborted(Exception):
    pass


@dataclass
class UnpackResult:
    size: int
    files: int
    diff_id: str
    compressed_size: int
    compressed_digest: str


def _syncfs(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class LayerWriter:
    """Receives one layer's compressed bytes; see :meth:`LayerStore.begin`."""

    def __init__(
        self,
        *,
        chain_id: str,
        parent: str | None,
        media_type: str,
        compression: str,
        blob_digest: str,
        expected_diff_id: str,
        staging: Path,
        limits: UnpackLimits,
        install: Callable[[LayerWriter, UnpackResult], tuple[LayerInfo, bool]],
        release: Callable[[str], None],
        queue_bytes: int = 16 << 20,
        gzip_backend: str | None = None,
        idle_timeout: float = 900.0,
        sync: bool = False,
    ) -> None:
        self.chain_id = chain_id
        self.parent = parent
        self.media_type = media_type
        self.blob_digest = blob_digest
        self.expected_diff_id = expected_diff_id
        self.staging = staging  # <root>/staging/<random>; the layer goes to staging/diff
        self._compression = compression
        self._limits = limits
        self._install = install
        self._release = release
        self._queue_limit = queue_bytes
        self._gzip_backend = gzip_backend
        self._idle_timeout = idle_timeout
        self._sync = sync
        self._loop = asyncio.get_running_loop()
        self._q: queue.SimpleQueue[bytes | _Abort | None] = queue.SimpleQueue()
        self._pending = bytearray()
        self._last_put = time.monotonic()
        self._fed = 0
        self._consumed = 0  # written by the worker only
        self._waiting = False
        self._space = asyncio.Event()
        self._finished = asyncio.Event()
        self._result: UnpackResult | None = None
        self._error: BaseException | None = None
        self._eof = False
        self._aborting = False
        self._released = False
        self._state = "open"  # open -> committing -> committed | failed | aborted
        self._info: LayerInfo | None = None
        self._blob_hash = hashlib.new(blob_digest.split(":", 1)[0]) if blob_digest else None
        self._compressed = 0
        self._thread = threading.Thread(
            target=self._work, name=f"pycrio-unpack-{chain_id[7:19]}", daemon=True
        )
        self._thread.start()

    # -- event-loop side ------------------------------------------------------------
    @property
    def committed(self) -> bool:
        return self._state == "committed"

    async def feed(self, chunk: bytes) -> None:
        """Queue compressed bytes; waits while the worker is behind. Raises the worker's error."""
        if self._state != "open":
            raise FailedPrecondition(f"layer {self.chain_id}: writer is {self._state}")
        if self._error is not None:
            raise self._error
        if not chunk:
            return
        if len(chunk) < _COALESCE:
            self._pending += chunk
            # A slow transfer still reaches the worker regularly (its idle timer, progress).
            if len(self._pending) < _COALESCE and time.monotonic() - self._last_put < _COALESCE_DELAY:
                return
            chunk = bytes(self._pending)
            self._pending.clear()
        elif self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        self._put(chunk)
        while self._fed - self._consumed > self._queue_limit and not self._finished.is_set():
            self._waiting = True
            self._space.clear()
            if self._fed - self._consumed <= self._queue_limit:
                break
            await self._space.wait()
        self._waiting = False
        if self._error is not None:
            raise self._error

    def _put(self, chunk: bytes) -> None:
        self._fed += len(chunk)
        self._last_put = time.monotonic()
        self._q.put(chunk)

    async def commit(self) -> LayerInfo:
        """Finish the stream, wait for the worker, verify, and make the layer visible."""
        if self._state == "committed":
            assert self._info is not None
            return self._info
        if self._state != "open":
            raise FailedPrecondition(f"layer {self.chain_id}: cannot commit a writer that is {self._state}")
        self._state = "committing"
        if self._pending:
            self._put(bytes(self._pending))
            self._pending.clear()
        self._q.put(_EOF)
        try:
            await self._finished.wait()
        except asyncio.CancelledError:
            self._trigger_abort()
            raise
        if self._state == "aborted":  # abort() ran while we waited
            await asyncio.to_thread(shutil.rmtree, self.staging, True)
            raise FailedPrecondition(f"layer {self.chain_id}: the writer was aborted")
        if self._error is not None or self._result is None:
            self._state = "failed"
            self._do_release()
            raise self._error or Internal(f"layer {self.chain_id}: unpack ended without a result")
        try:
            info, moved = self._install(self, self._result)
        except BaseException:
            self._state = "failed"
            self._do_release()
            await asyncio.to_thread(shutil.rmtree, self.staging, True)
            raise
        self._info = info
        if not moved:  # another writer installed the same layer first: ours is a duplicate
            await asyncio.to_thread(shutil.rmtree, self.staging, True)
        self._state = "committed"
        self._do_release()
        return info

    async def abort(self) -> None:
        """Stop the worker and remove the staging directory. Idempotent; no-op once committed."""
        if self._state == "committed":
            return
        self._trigger_abort()
        await self._finished.wait()
        if self.staging.exists():
            await asyncio.to_thread(shutil.rmtree, self.staging, True)

    def _trigger_abort(self) -> None:
        if self._state in ("committed",):
            return
        if self._state != "failed":
            self._state = "aborted"
        self._aborting = True
        self._q.put(_ABORT)
        self._do_release()

    def _do_release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self.chain_id)

    async def __aenter__(self) -> LayerWriter:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state != "committed":
            await self.abort()

    def _wake(self) -> None:
        self._space.set()

    def _done(self, result: UnpackResult | None, error: BaseException | None) -> None:
        self._result = result
        self._error = error
        self._finished.set()
        self._space.set()

    # -- worker thread ----------------------------------------------------------------
    def _read_chunk(self) -> bytes:
        if self._eof:
            return b""
        try:
            item = self._q.get(timeout=self._idle_timeout)
        except queue.Empty:
            raise LayerError(self.chain_id, f"no data for {self._idle_timeout:.0f}s: unpack abandoned")
        if item is _ABORT or self._aborting:
            raise _Aborted()
        if item is None:
            self._eof = True
            return b""
        assert isinstance(item, bytes)
        self._consumed += len(item)
        if self._waiting:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake)
        self._compressed += len(item)
        if self._blob_hash is not None:
            self._blob_hash.update(item)
        return item

    def _work(self) -> None:
        result: UnpackResult | None = None
        error: BaseException | None = None
        source = BlockSource(self._read_chunk, self._compression, self._limits.max_bytes,
                             gzip_backend=self._gzip_backend)
        pipe = BlockPipe(source.read_block, name=f"pycrio-inflate-{self.chain_id[7:19]}")
        try:
            result = self._unpack(source, pipe)
        except _Aborted:
            error = LayerError(self.chain_id, "unpack aborted")
        except PycrioError as e:
            error = e
        except BaseException as e:  # pragma: no cover - defensive
            log.exception("unpacking layer %s failed", self.chain_id)
            error = Internal(f"layer {self.chain_id}: unpack failed: {e}")
        if error is not None:
            pipe.stop()
            self._q.put(_ABORT)  # wakes the producer if it waits for network data
            shutil.rmtree(self.staging, ignore_errors=True)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(self._done, result, error)

    def _unpack(self, source: BlockSource, pipe: BlockPipe) -> UnpackResult:
        diff = self.staging / "diff"
        reader = tarstream.TarReader(pipe.read_block)
        unpacker = Unpacker(os.fsencode(diff), self._limits)
        try:
            with unpacker:
                unpacker.run(reader)
                reader.drain()
                unpacker.finish()
            if self._sync:
                _syncfs(diff)
        except tarstream.TarError as e:
            raise LayerError(self.chain_id, e.reason, e.entry)
        except UnpackError as e:
            raise LayerError(self.chain_id, e.reason, e.entry)
        except DecompressError as e:
            raise LayerError(self.chain_id, str(e))
        except OSError as e:
            where = f" (entry {reader.current!r})" if reader.current else ""
            if e.errno in _LAYER_ERRNOS:  # the layer asks for what no filesystem gives
                raise LayerError(self.chain_id, os.strerror(e.errno or 0), reader.current)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ResourceExhausted(f"layer {self.chain_id}: no space left on device{where}")
            raise Internal(f"layer {self.chain_id}: unpacking failed{where}: {e}")
        if self._blob_hash is not None:
            got = f"{self._blob_hash.name}:{self._blob_hash.hexdigest()}"
            if got != self.blob_digest:
                raise LayerError(self.chain_id,
                                 f"blob digest mismatch: received {got}, expected {self.blob_digest}")
        if self.expected_diff_id and source.diff_id != self.expected_diff_id:
            raise LayerError(
                self.chain_id,
                f"diff ID mismatch: the layer content is {source.diff_id}, "
                f"the image says {self.expected_diff_id}",
            )
        return UnpackResult(
            size=unpacker.stats.size,
            files=unpacker.stats.entries,
            diff_id=source.diff_id,
            compressed_size=self._compressed,
            compressed_digest=(f"{self._blob_hash.name}:{self._blob_hash.hexdigest()}"
                               if self._blob_hash is not None else ""),
        )
