"""Undo journals: every side effect is written down before it is made.

A manager appends an :class:`Effect` to a record's journal and saves the
record, then makes the side effect. To tear the object down — because a
later step failed, because it is being removed, or because a crash left it
half made — :func:`unwind` runs the undo function of each effect, newest
first. Undo functions must be idempotent and must accept effects that were
recorded but never made (the crash may have come between the two).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pycrio.log import kv
from pycrio.state.records import Effect

log = logging.getLogger("pycrio.journal")

Undo = Callable[[dict[str, Any]], Awaitable[None]]


class UndoRegistry:
    """Maps an effect kind to the coroutine that reverses it."""

    def __init__(self) -> None:
        self._undo: dict[str, Undo] = {}

    def register(self, kind: str, undo: Undo) -> None:
        self._undo[kind] = undo

    async def unwind(
        self,
        journal: list[Effect],
        owner: str,
        on_progress: Callable[[], None] | None = None,
        stop_at: str | None = None,
    ) -> list[Effect]:
        """Undo effects newest first; returns those whose undo failed.

        Effects undone successfully are removed from ``journal`` in place, and
        ``on_progress`` (typically "save the record") runs after each one, so
        a crash during unwinding resumes where it stopped. With ``stop_at``,
        unwinding stops before the newest effect of that kind.
        """
        failed: list[Effect] = []
        while journal:
            effect = journal[-1]
            if stop_at is not None and effect.kind == stop_at:
                break
            undo = self._undo.get(effect.kind)
            try:
                if undo is None:
                    raise RuntimeError(f"no undo for effect kind {effect.kind!r}")
                await undo(effect.data)
            except Exception as exc:
                log.warning(
                    "undo failed",
                    extra=kv(owner=owner, effect=effect.kind, error=f"{type(exc).__name__}: {exc}"),
                )
                failed.append(effect)
            journal.pop()
            if on_progress is not None:
                on_progress()
        return failed
