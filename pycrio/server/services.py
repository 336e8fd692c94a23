"""The servicer objects for the two CRI services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pycrio.server.image import ImageServicer
from pycrio.server.runtime import RuntimeServicer

if TYPE_CHECKING:
    from pycrio.core import Core


def servicers(core: Core) -> tuple[object, object]:
    """(RuntimeService, ImageService) servicers, in SERVICE_NAMES order."""
    return RuntimeServicer(core), ImageServicer(core)
