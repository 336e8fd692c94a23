"""Pull progress: per-layer bytes, observable by async subscribers.

The puller registers each pull with :meth:`PullTracker.start` and updates
its :class:`LayerProgress` objects as bytes arrive; a layer download shared
by two pulls shares one LayerProgress. Subscribers (the CLI's live progress
bars, through a small extra service) iterate :meth:`PullTracker.subscribe`
and get a fresh snapshot after each change, at most every ``interval``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace

# Layer states.
WAITING = "waiting"
DOWNLOADING = "downloading"
UNPACKING = "unpacking"
DONE = "done"
EXISTS = "exists"
FAILED = "failed"
# Pull states.
RESOLVING = "resolving"
PULLING = "pulling"
COMPLETE = "complete"
ERROR = "failed"

FINISHED = (COMPLETE, ERROR)
# Pulls kept after they finish, for a subscriber that arrives late.
KEEP_FINISHED = 32


@dataclass
class LayerProgress:
    digest: str
    total: int
    done: int = 0
    state: str = WAITING


@dataclass
class PullProgress:
    id: int
    ref: str
    names: frozenset[str]
    state: str = RESOLVING
    layers: list[LayerProgress] = field(default_factory=list)
    image_id: str = ""
    error: str = ""
    started: float = field(default_factory=time.time)

    def snapshot(self) -> PullProgress:
        return replace(self, layers=[replace(x) for x in self.layers])

    @property
    def done_bytes(self) -> int:
        return sum(x.total if x.state in (DONE, EXISTS) else x.done for x in self.layers)

    @property
    def total_bytes(self) -> int:
        return sum(x.total for x in self.layers)


class PullTracker:
    """The pulls in progress (and the last few finished ones)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pulls: dict[int, PullProgress] = {}
        self._subscribers: set[asyncio.Event] = set()

    def start(self, ref: str, names: Iterable[str] = ()) -> PullProgress:
        p = PullProgress(next(self._ids), ref, frozenset({ref, *names}))
        self._pulls[p.id] = p
        self._trim()
        self.changed()
        return p

    def finish(self, p: PullProgress, image_id: str = "", error: str = "") -> None:
        p.state = ERROR if error else COMPLETE
        p.image_id = image_id
        p.error = error
        self.changed()

    def changed(self) -> None:
        for ev in self._subscribers:
            ev.set()

    def active(self) -> list[PullProgress]:
        return [p.snapshot() for p in self._pulls.values() if p.state not in FINISHED]

    def _trim(self) -> None:
        finished = [pid for pid, p in self._pulls.items() if p.state in FINISHED]
        for pid in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
            del self._pulls[pid]

    def _matching(self, ref: str | None, since: float) -> list[PullProgress]:
        return [
            p.snapshot()
            for p in self._pulls.values()
            if (ref is None or ref in p.names) and (p.state not in FINISHED or p.started >= since)
        ]

    async def subscribe(
        self, ref: str | None = None, *, interval: float = 0.1, since: float | None = None
    ) -> AsyncIterator[list[PullProgress]]:
        """Snapshots of the pulls of ``ref`` (all pulls when None) after each change.

        With a ``ref``, the iteration waits for such a pull to appear, then ends
        with the snapshot in which every matching pull has finished. Without a
        ``ref`` it runs until the caller stops iterating. Pulls that finished
        before ``since`` (default: now) are not reported.
        """
        start = time.time() if since is None else since
        ev = asyncio.Event()
        ev.set()
        self._subscribers.add(ev)
        try:
            while True:
                await ev.wait()
                ev.clear()
                snap = self._matching(ref, start)
                yield snap
                if ref is not None and snap and all(p.state in FINISHED for p in snap):
                    return
                await asyncio.sleep(interval)
        finally:
            self._subscribers.discard(ev)
