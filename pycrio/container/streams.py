"""The streaming server's backend: exec, attach and port-forward into pods.

* exec runs ``runc exec --process <json>`` directly (not under conmon), with a
  pty allocated by pycrio for tty sessions, as CRI-O does;
* attach speaks to conmon's attach socket;
* port-forward opens a TCP connection from inside the pod's network
  namespace to 127.0.0.1:<port>.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycrio.errors import FailedPrecondition, InvalidArgument
from pycrio.state.records import CTR_RUNNING
from pycrio.streaming.backend import StreamIO
from pycrio.streaming.netns import connect_in_netns
from pycrio.streaming.process import run_bridged

if TYPE_CHECKING:
    from pycrio.container.manager import ContainerManager
    from pycrio.oci.runtime import OCIRuntime
    from pycrio.sandbox.manager import PodManager

# conmon's attach packets: one byte naming the pipe, then up to 8 KiB of data.
_ATTACH_STDOUT = 2
_ATTACH_STDERR = 3
_ATTACH_READ = 8192 + 1


class RuntimeStreams:
    """Implements the streaming server's StreamingRuntime protocol."""

    def __init__(
        self, containers: ContainerManager, pods: PodManager, runtime: OCIRuntime, work_dir: Path
    ) -> None:
        self.containers = containers
        self.pods = pods
        self.runtime = runtime
        self.work_dir = work_dir

    def _running(self, container_id: str) -> Any:
        ctr = self.containers.get(container_id)
        if ctr.state != CTR_RUNNING:
            raise FailedPrecondition(f"container {ctr.id} is not running")
        return ctr

    # -- exec ------------------------------------------------------------------------------
    async def exec(self, container_id: str, cmd: Sequence[str], tty: bool, stdin: bool, io: StreamIO) -> int:
        ctr = self._running(container_id)
        if not cmd:
            raise InvalidArgument("exec command is empty")
        runtime = self.runtime
        handler = self.containers.env.handler(ctr.record.runtime_handler)
        process = self.containers.process_spec(ctr)
        process["args"] = list(cmd)
        process["terminal"] = tty
        if tty and not any(e.startswith("TERM=") for e in process.get("env", [])):
            process["env"] = [*process.get("env", []), "TERM=xterm"]
        work = self.work_dir
        work.mkdir(mode=0o700, exist_ok=True)
        token = secrets.token_hex(8)
        spec_path, pid_path = work / f"{ctr.id[:12]}-{token}.json", work / f"{ctr.id[:12]}-{token}.pid"
        spec_path.write_text(json.dumps(process))
        argv = runtime.exec_argv(ctr.id, handler, spec_path, tty)
        argv[-1:-1] = ["--pid-file", str(pid_path)]
        try:
            return await run_bridged(
                argv, tty, stdin, io, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            )
        finally:
            # Killing runc does not kill what it started inside the container.
            _kill_pid_file(pid_path, ctr.id)
            spec_path.unlink(missing_ok=True)
            pid_path.unlink(missing_ok=True)

    # -- attach ----------------------------------------------------------------------------
    async def attach(self, container_id: str, tty: bool, stdin: bool, io: StreamIO) -> None:
        ctr = self._running(container_id)
        runtime = self.runtime
        sock = runtime.connect_attach(ctr.id)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            if stdin and io.stdin is not None and ctr.config.stdin:
                tasks.append(loop.create_task(self._attach_stdin(sock, io, ctr.config.stdin_once)))
            if tty:
                tasks.append(loop.create_task(self._attach_resize(ctr.id, io)))
            await self._attach_output(sock, io)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            sock.close()

    async def _attach_output(self, sock: socket.socket, io: StreamIO) -> None:
        loop = asyncio.get_running_loop()
        while True:
            packet = await loop.sock_recv(sock, _ATTACH_READ)
            if not packet:
                return
            target = io.stderr if packet[0] == _ATTACH_STDERR else io.stdout
            if packet[0] not in (_ATTACH_STDOUT, _ATTACH_STDERR) or target is None:
                continue
            await target.write(packet[1:])

    async def _attach_stdin(self, sock: socket.socket, io: StreamIO, stdin_once: bool) -> None:
        assert io.stdin is not None
        loop = asyncio.get_running_loop()
        while True:
            data = await io.stdin.read(32768)
            if not data:
                break
            await loop.sock_sendall(sock, data)
        if stdin_once:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

    async def _attach_resize(self, container_id: str, io: StreamIO) -> None:
        for size in io.pending_resizes():
            await self.runtime.resize(container_id, size.height, size.width)
        async for size in io.resize_events():
            with contextlib.suppress(Exception):
                await self.runtime.resize(container_id, size.height, size.width)

    # -- port-forward ------------------------------------------------------------------------
    async def port_forward(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pod = self.pods.get(pod_id)
        if not pod.ready:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        netns = None if pod.record.host_network else pod.record.netns
        return await connect_in_netns(netns, "127.0.0.1", port)


def _kill_pid_file(path: Path, container_id: str) -> None:
    """Kill the exec'd process if it still runs in the container's cgroup."""
    try:
        pid = int(path.read_text().strip())
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except (OSError, ValueError):
        return
    if container_id not in cgroups:
        return  # gone, and the pid belongs to someone else now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
