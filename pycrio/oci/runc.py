"""Running the OCI runtime's CLI (runc, crun: the same commands) and reading its errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pycrio.errors import DeadlineExceeded, FailedPrecondition, Internal, NotFound
from pycrio.oci import procs
from pycrio.oci.conmon import child_env, clean_runtime_message


@dataclass(frozen=True)
class RuntimeHandlerSpec:
    """One OCI runtime (``[runtimes.<name>]``): its binary and state directory."""

    name: str
    path: str
    root: str


class OCIRuntimeError(Internal):
    """The runtime (or conmon) failed; ``stderr`` holds what it said."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class ContainerNotFound(NotFound):
    """The runtime does not know the container."""


class ContainerNotRunning(FailedPrecondition):
    """The operation needs a running (or created) container and it is not."""


class ContainerRunning(FailedPrecondition):
    """The operation needs a stopped container (or a created one) and it runs."""


_NOT_FOUND = ("does not exist", "container not found")
_NOT_RUNNING = (
    "container not running",
    "is not running",
    "no such process",
    "invalid process",
    "process already finished",
    "has stopped",
    "cannot start a container that has",
)
_RUNNING = ("that is not stopped", "already running")


def classify(handler: RuntimeHandlerSpec, op: str, cid: str, stderr: str) -> Exception:
    """The pycrio error for a failed ``<runtime> <op>``."""
    msg = clean_runtime_message(stderr) or "no error output"
    low = msg.lower()
    text = f"{handler.name} {op} {cid} failed: {msg}"
    if any(s in low for s in _NOT_FOUND) or ("no such file or directory" in low and "status" in low):
        return ContainerNotFound(f"container {cid} not found by {handler.name}: {msg}")
    if any(s in low for s in _RUNNING):
        return ContainerRunning(text)
    if any(s in low for s in _NOT_RUNNING):
        return ContainerNotRunning(text)
    return OCIRuntimeError(text, stderr)


def base_argv(handler: RuntimeHandlerSpec, systemd: bool = False) -> list[str]:
    argv = [handler.path, "--root", handler.root]
    if systemd:
        argv.append("--systemd-cgroup")
    return argv


async def run(
    handler: RuntimeHandlerSpec,
    args: list[str],
    *,
    cid: str,
    stdin: bytes | None = None,
    limit: float = 60.0,
    systemd: bool = False,
) -> bytes:
    """Run ``<runtime> --root <root> <args...>``; its stdout, or a classified error."""
    argv = base_argv(handler, systemd) + args
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(None, None),
            start_new_session=True,
        )
    except OSError as exc:
        raise OCIRuntimeError(f"cannot run {handler.name} ({handler.path}): {exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    except BaseException as exc:
        procs.kill_child(proc)
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise DeadlineExceeded(f"{handler.name} {args[0]} {cid} did not finish within {limit}s")
        raise
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace") or out.decode("utf-8", "replace")
        raise classify(handler, args[0], cid, text)
    return out
