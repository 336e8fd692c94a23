"""Paging for the Stream* list RPCs: the same items as the unary call, in chunks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Items per streamed message: small enough to stay far below the gRPC
# message limit even for verbose objects, large enough to be cheap.
PAGE_SIZE = 500


def pages(items: Sequence[T], size: int = PAGE_SIZE) -> Iterator[Sequence[T]]:
    """Chunks of ``items``; one empty chunk when there are none (the client sees an answer)."""
    if not items:
        yield items
        return
    for start in range(0, len(items), size):
        yield items[start : start + size]
