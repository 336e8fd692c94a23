"""Pull progress for ``pycrioctl pull``: follow the daemon's PullProgress stream and draw it.

On a terminal every layer gets a live bar, redrawn in place; elsewhere (a pipe,
a log file) one plain line is written each time a layer changes state, so the
output stays short and readable. The follower runs in its own thread while the
main thread waits for PullImage; a runtime without pycrio's extra service
(crictl-compatible runtimes such as containerd) simply shows no progress.
"""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

import grpc

from pycrio.cli.ctl_common import human_size
from pycrio.server.extra import PullProgressCall

BAR_WIDTH = 30
DIGEST_WIDTH = 19  # "sha256:" + 12 hex digits
FINISHED = ("complete", "failed")


def short_digest(digest: str) -> str:
    return digest[:DIGEST_WIDTH]


def _layer_line(layer: dict[str, Any]) -> str:
    state = str(layer.get("state", ""))
    done, total = int(layer.get("done", 0)), int(layer.get("total", 0))
    if state in ("done", "exists"):
        done = total
    frac = min(done / total, 1.0) if total > 0 else (1.0 if state in ("done", "exists") else 0.0)
    filled = int(frac * BAR_WIDTH)
    bar = "=" * filled + (">" if 0 < filled < BAR_WIDTH else "") + " " * BAR_WIDTH
    bar = bar[:BAR_WIDTH]
    sizes = f"{human_size(done)}/{human_size(total)}"
    return f"{short_digest(str(layer.get('digest', '')))}  {state:<11} [{bar}] {sizes}"


class TerminalRenderer:
    """One live line per layer, redrawn in place with ANSI cursor movement."""

    def __init__(self, out: TextIO, ref: str) -> None:
        self.out = out
        self.ref = ref
        self.drawn = 0

    def update(self, pull: dict[str, Any]) -> None:
        lines = [f"Pulling {self.ref}: {pull.get('state', '')}"]
        lines += [_layer_line(layer) for layer in pull.get("layers") or []]
        buf = f"\x1b[{self.drawn}A\r" if self.drawn else ""
        buf += "".join(f"\x1b[2K{line}\n" for line in lines)
        self.out.write(buf)
        self.out.flush()
        self.drawn = len(lines)

    def close(self) -> None:
        self.out.flush()


class PlainRenderer:
    """A line per layer state change: ``<digest>: downloading 1.04MB``."""

    def __init__(self, out: TextIO, ref: str) -> None:
        self.out = out
        self.ref = ref
        self.seen: dict[str, str] = {}
        self.pull_state = ""

    def update(self, pull: dict[str, Any]) -> None:
        state = str(pull.get("state", ""))
        if state != self.pull_state and state not in FINISHED:
            self.out.write(f"{self.ref}: {state}\n")
            self.pull_state = state
        for layer in pull.get("layers") or []:
            digest = str(layer.get("digest", ""))
            lstate = str(layer.get("state", ""))
            if self.seen.get(digest) == lstate:
                continue
            self.seen[digest] = lstate
            self.out.write(f"{digest}: {lstate} {human_size(int(layer.get('total', 0)))}\n")
        self.out.flush()

    def close(self) -> None:
        self.out.flush()


Renderer = TerminalRenderer | PlainRenderer


class ProgressFollower:
    """Follows the progress of one pull on a thread of its own."""

    def __init__(self, channel: grpc.Channel, ref: str, renderer: Renderer) -> None:
        self.renderer = renderer
        self.last: dict[str, Any] | None = None
        self._lock = threading.Lock()
        # Pulls that started before this moment and already ended are not ours.
        self._call = PullProgressCall(channel, ref, since=time.time(), interval=0.1)
        self._thread = threading.Thread(target=self._run, name="pull-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._call:
                pulls = message.get("pulls") or []
                if not pulls:
                    continue
                with self._lock:
                    self.last = pulls[-1]
                    self.renderer.update(pulls[-1])
        except grpc.RpcError:
            pass  # cancelled, or the runtime has no progress service

    def finish(self, wait: float) -> None:
        """Let the stream end by itself (it does once the pull is over), then stop it."""
        self._thread.join(wait)
        self._call.cancel()
        self._thread.join(5.0)
        with self._lock:
            self.renderer.close()
