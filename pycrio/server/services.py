"""The servicer objects for the two CRI services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pycrio.server.image import ImageServicer
from pycrio.server.runtime import RuntimeServicer

if TYPE_CHECKING:
    from pycrio.daemon import Daemon


def servicers(daemon: Daemon) -> tuple[object, object]:
    """(RuntimeService, ImageService) servicers, in SERVICE_NAMES order."""
    return RuntimeServicer(daemon), ImageServicer(daemon)
