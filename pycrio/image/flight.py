"""Single-flight: concurrent callers of the same key share one task.

The shared task runs on its own; each caller waits on it through a shield.
A caller that is cancelled stops waiting, and when the last waiter is gone
the task itself is cancelled and awaited, so its cleanup (aborting staged
layers) has finished by the time that last caller's cancellation returns.
A caller arriving while an abandoned task is still cleaning up waits for
that to end and starts a fresh task.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("abandoned", "task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0
        self.abandoned = False


class Flights(Generic[K, T]):
    """A table of in-flight tasks keyed by ``K``."""

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[T]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def waiters(self, key: K) -> int:
        fl = self._flights.get(key)
        return fl.waiters if fl else 0

    async def run(self, key: K, factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Join the task for ``key``, starting it with ``factory()`` if there is none."""
        fl = self._flights.get(key)
        # Bounded: each pass waits for one abandoned task to end (and be forgotten).
        for _ in range(8):
            if fl is None or not fl.abandoned:
                break
            await asyncio.wait([fl.task])
            if self._flights.get(key) is fl:
                del self._flights[key]
            fl = self._flights.get(key)
        if fl is None or fl.abandoned:
            fl = _Flight(asyncio.create_task(factory()))
            self._flights[key] = fl
            fl.task.add_done_callback(functools.partial(self._forget, key, fl))
        fl.waiters += 1
        try:
            return await asyncio.shield(fl.task)
        finally:
            fl.waiters -= 1
            if fl.waiters == 0 and not fl.task.done():
                # Nobody wants the result any more: stop the work and let it clean up.
                fl.abandoned = True
                fl.task.cancel()
                await asyncio.wait([fl.task])

    def _forget(self, key: K, fl: _Flight[T], _task: object) -> None:
        if self._flights.get(key) is fl:
            del self._flights[key]
        # A failed task nobody awaited (all waiters gone) must not warn at exit.
        if not fl.task.cancelled():
            fl.task.exception()
