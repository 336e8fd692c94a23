"""Crash points for recovery tests.

``PYCRIO_CRASH_AT=<name>`` in the daemon's environment makes the daemon die
at once (``os._exit``, as a SIGKILL would leave things) when it reaches the
point of that name. Without the variable this costs one dict lookup.
"""

from __future__ import annotations

import os

_TARGET = os.environ.get("PYCRIO_CRASH_AT", "")
CRASH_EXIT_CODE = 99


def crash_point(name: str) -> None:
    """Die here if the environment asks for it."""
    if _TARGET and name == _TARGET:
        os._exit(CRASH_EXIT_CODE)
