"""Interop with the real Kubernetes client stack: crictl (client-go + moby/spdystream, and its
WebSocket transports) against our streaming server, behind a minimal fake CRI endpoint.

Skipped when no crictl binary is found ($PYCRIO_CRICTL, $PATH, /tmp/critools/bin/crictl).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from pycrio.api import api_pb2, api_pb2_grpc
from pycrio.streaming.server import StreamingServer
from tests.integration.test_streaming_exec import BUSYBOX, LocalRuntime, running_server


def _find_crictl() -> str | None:
    for candidate in (os.environ.get("PYCRIO_CRICTL"), shutil.which("crictl"), "/tmp/critools/bin/crictl"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CRICTL = _find_crictl()
pytestmark = [
    pytest.mark.skipif(CRICTL is None, reason="no crictl binary"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox-static"),
]
CID = "c0ffee"
POD = "pod1"


class FakeRuntime(api_pb2_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def __init__(self, srv: StreamingServer) -> None:
        self.srv = srv

    async def Version(self, req: Any, ctx: Any) -> Any:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="fake", runtime_version="0", runtime_api_version="v1"
        )

    async def Exec(self, req: Any, ctx: Any) -> Any:
        url = self.srv.get_exec_url(
            req.container_id,
            list(req.cmd),
            tty=req.tty,
            stdin=req.stdin,
            stdout=req.stdout,
            stderr=req.stderr,
        )
        return api_pb2.ExecResponse(url=url)

    async def Attach(self, req: Any, ctx: Any) -> Any:
        url = self.srv.get_attach_url(
            req.container_id, tty=req.tty, stdin=req.stdin, stdout=req.stdout, stderr=req.stderr
        )
        return api_pb2.AttachResponse(url=url)

    async def PortForward(self, req: Any, ctx: Any) -> Any:
        return api_pb2.PortForwardResponse(
            url=self.srv.get_portforward_url(req.pod_sandbox_id, list(req.port))
        )

    async def ContainerStatus(self, req: Any, ctx: Any) -> Any:
        return api_pb2.ContainerStatusResponse(
            status=api_pb2.ContainerStatus(id=req.container_id, state=api_pb2.CONTAINER_RUNNING)
        )

    async def PodSandboxStatus(self, req: Any, ctx: Any) -> Any:
        return api_pb2.PodSandboxStatusResponse(
            status=api_pb2.PodSandboxStatus(id=req.pod_sandbox_id, state=api_pb2.SANDBOX_READY)
        )


class FakeImages(api_pb2_grpc.ImageServiceServicer):  # type: ignore[misc]
    async def ListImages(self, req: Any, ctx: Any) -> Any:
        return api_pb2.ListImagesResponse()

    async def ImageFsInfo(self, req: Any, ctx: Any) -> Any:
        return api_pb2.ImageFsInfoResponse()


@pytest.fixture
async def crictl_config(tmp_path: Path) -> AsyncIterator[tuple[str, StreamingServer]]:
    sock = tmp_path / "cri.sock"
    async with running_server(LocalRuntime()) as srv:
        grpc_server = grpc.aio.server()
        api_pb2_grpc.add_RuntimeServiceServicer_to_server(FakeRuntime(srv), grpc_server)
        api_pb2_grpc.add_ImageServiceServicer_to_server(FakeImages(), grpc_server)
        grpc_server.add_insecure_port(f"unix://{sock}")
        await grpc_server.start()
        config = tmp_path / "crictl.yaml"
        config.write_text(f"runtime-endpoint: unix://{sock}\nimage-endpoint: unix://{sock}\ntimeout: 20\n")
        try:
            yield str(config), srv
        finally:
            await grpc_server.stop(None)


async def crictl(config: str, *args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    assert CRICTL is not None
    proc = await asyncio.create_subprocess_exec(
        CRICTL, "--config", config, *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


TRANSPORTS = pytest.mark.parametrize("transport", ["spdy", "websocket"])


@TRANSPORTS
async def test_crictl_exec(crictl_config: tuple[str, StreamingServer], transport: str) -> None:
    config, _ = crictl_config
    rc, out, err = await crictl(
        config, "exec", "-r", transport, CID, BUSYBOX, "sh", "-c", "echo out; echo e >&2"
    )
    assert (rc, out) == (0, b"out\n") and b"e\n" in err
    rc, out, err = await crictl(config, "exec", "-r", transport, CID, BUSYBOX, "sh", "-c", "exit 3")
    assert rc != 0 and b"exit code 3" in err
    data = b"".join(b"%d\n" % i for i in range(100000))
    rc, out, _ = await crictl(config, "exec", "-r", transport, "-i", CID, BUSYBOX, "cat", stdin=data)
    assert (rc, out) == (0, data)
    rc, out, _ = await crictl(config, "exec", "-r", transport, CID, BUSYBOX, "seq", "1", "1400000")
    assert rc == 0 and out == b"".join(b"%d\n" % i for i in range(1, 1400001))


@TRANSPORTS
async def test_crictl_attach(crictl_config: tuple[str, StreamingServer], transport: str) -> None:
    config, _ = crictl_config
    rc, out, _ = await crictl(config, "attach", "-r", transport, "-i", CID, stdin=b"through attach\n")
    assert (rc, out) == (0, b"through attach\n")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@TRANSPORTS
async def test_crictl_port_forward(crictl_config: tuple[str, StreamingServer], transport: str) -> None:
    config, _ = crictl_config
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    remote = echo.sockets[0].getsockname()[1]
    local = free_port()
    assert CRICTL is not None
    proc = await asyncio.create_subprocess_exec(
        CRICTL, "--config", config, "port-forward", "-r", transport, POD, f"{local}:{remote}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"Forwarding from" in line

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            payload = os.urandom(5000 + 1000 * i)
            writer.write(payload)
            got = b""
            while len(got) < len(payload):
                chunk = await asyncio.wait_for(reader.read(65536), 20)
                assert chunk
                got += chunk
            writer.close()
            assert got == payload

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 60)
    finally:
        proc.kill()
        await proc.wait()
        echo.close()
        await echo.wait_closed()
