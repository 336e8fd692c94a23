"""Creation requests that survive the client giving up.

The kubelet gives RunPodSandbox and CreateContainer a deadline; when it
passes, the kubelet retries with the same name. Aborting half-way and then
refusing the retry with a name clash is what leaves pods stuck. Instead a
creation runs in its own task, shielded from the caller's cancellation:

* a retry while the first attempt still runs waits for that attempt;
* a retry after an abandoned attempt finished gets its result ("parked");
* a second request for a name whose first request was answered normally is
  a real duplicate and is refused by the caller's own check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

PARK_SECONDS = 600.0


class Creations:
    """Single-flight, cancellation-shielded creations keyed by reservation name."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[str]] = {}
        self._parked: dict[str, tuple[str, float]] = {}

    def running(self, name: str) -> bool:
        return name in self._running

    def take_parked(self, name: str, alive: Callable[[str], bool]) -> str | None:
        """The id an abandoned creation of ``name`` produced, if it is still there."""
        self._expire()
        entry = self._parked.pop(name, None)
        if entry is None or not alive(entry[0]):
            return None
        return entry[0]

    async def run(self, name: str, create: Callable[[], Awaitable[str]]) -> str:
        """Run ``create`` for ``name``, or join the attempt already running."""
        task = self._running.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(create())  # type: ignore[arg-type]
            self._running[name] = task
            task.add_done_callback(lambda t: self._running.pop(name, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The caller gave up; keep what the creation makes for its retry.
            if not task.done():
                task.add_done_callback(lambda t: self._park(name, t))
            raise

    def _park(self, name: str, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._parked[name] = (task.result(), time.monotonic())

    def _expire(self) -> None:
        cutoff = time.monotonic() - PARK_SECONDS
        for name in [n for n, (_, at) in self._parked.items() if at < cutoff]:
            del self._parked[name]
