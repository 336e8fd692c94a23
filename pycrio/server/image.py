"""ImageService handlers: validate, call the image core, translate."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pycrio.daemon import Daemon


class ImageServicer:
    """CRI ImageService. RPCs not defined here answer UNIMPLEMENTED."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
