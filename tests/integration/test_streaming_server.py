"""The streaming HTTP server's routing, tokens, negotiation, TLS and URL handling."""

from __future__ import annotations

import asyncio
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from pycrio.errors import InvalidArgument, ResourceExhausted
from pycrio.streaming import client as sc
from pycrio.streaming.server import StreamingConfig, StreamingServer
from pycrio.streaming.tokens import RequestCache
from tests.integration.test_streaming_exec import LocalRuntime, running_server, server, sh

__all__ = ["server"]  # the fixture, re-exported for pytest


async def http(port: int, head: str) -> tuple[int, dict[str, list[str]], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        raw = await asyncio.wait_for(reader.read(65536), 10)
        while chunk := await asyncio.wait_for(reader.read(65536), 10):
            raw += chunk
    finally:
        writer.close()
    head_raw, _, body = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode().split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return int(lines[0].split()[1]), headers, body


def spdy_head(path: str, protocols: str = "v4.channel.k8s.io") -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        f"X-Stream-Protocol-Version: {protocols}\r\n\r\n"
    )


def token(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_urls_are_absolute_with_fresh_tokens(server: StreamingServer) -> None:
    url = server.get_exec_url("c", ["ls"])
    assert re.fullmatch(rf"http://127\.0\.0\.1:{server.port}/exec/[A-Za-z0-9_-]{{8}}", url)
    assert server.get_attach_url("c").split("/")[3] == "attach"
    assert server.get_portforward_url("pod", [80]).split("/")[3] == "portforward"
    assert url != server.get_exec_url("c", ["ls"])


def test_url_requests_are_validated() -> None:
    srv = StreamingServer(StreamingConfig(), LocalRuntime())
    with pytest.raises(RuntimeError):
        srv.get_exec_url("c", ["ls"])  # not started
    srv._base_url = "http://127.0.0.1:1"
    with pytest.raises(InvalidArgument):
        srv.get_exec_url("", ["ls"])
    with pytest.raises(InvalidArgument):
        srv.get_exec_url("c", [])
    with pytest.raises(InvalidArgument):
        srv.get_exec_url("c", ["ls"], tty=True, stderr=True)
    with pytest.raises(InvalidArgument):
        srv.get_attach_url("c", stdin=False, stdout=False, stderr=False)
    with pytest.raises(InvalidArgument):
        srv.get_portforward_url("")


async def test_token_is_single_use(server: StreamingServer) -> None:
    url = server.get_exec_url("c", sh("echo once"))
    assert (await sc.run_command(url)).stdout == b"once\n"
    status, _, body = await http(server.port, spdy_head(f"/exec/{token(url)}"))
    assert (status, body) == (404, b"404 page not found\n")
    with pytest.raises(sc.UpgradeError) as info:
        await sc.run_command(url, websocket=True)
    assert info.value.status == 404


async def test_expired_token_is_404(server: StreamingServer) -> None:
    now = [0.0]
    server.cache = RequestCache(ttl=60, clock=lambda: now[0])
    url = server.get_exec_url("c", sh("echo late"))
    now[0] = 61
    with pytest.raises(sc.UpgradeError) as info:
        await sc.run_command(url)
    assert info.value.status == 404


async def test_in_flight_limit() -> None:
    async with running_server(LocalRuntime(), max_in_flight=2) as srv:
        srv.get_exec_url("c", ["a"])
        srv.get_exec_url("c", ["b"])
        with pytest.raises(ResourceExhausted):
            srv.get_exec_url("c", ["c"])


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/foo",
        "/exec",
        "/exec/",
        "/exec/nonexistent",
        "/execx/TOKEN",
        "/exec/TOKEN/extra",
        "/attach/TOKEN",
    ],
)
async def test_unknown_paths_are_404(server: StreamingServer, path: str) -> None:
    tok = token(server.get_exec_url("c", ["ls"]))
    status, _, body = await http(server.port, spdy_head(path.replace("TOKEN", tok)))
    assert status == 404 and body == b"404 page not found\n"


async def test_wrong_method_is_404(server: StreamingServer) -> None:
    tok = token(server.get_exec_url("c", ["ls"]))
    status, _, _ = await http(server.port, f"PUT /exec/{tok} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404


async def test_missing_upgrade_is_400(server: StreamingServer) -> None:
    tok = token(server.get_exec_url("c", ["ls"]))
    status, _, body = await http(server.port, f"POST /exec/{tok} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and b"upgrade" in body


async def test_garbage_request_is_400(server: StreamingServer) -> None:
    status, _, _ = await http(server.port, "NONSENSE\r\n\r\n")
    assert status == 400


async def test_spdy_protocol_negotiation(server: StreamingServer) -> None:
    tok = token(server.get_exec_url("c", ["ls"]))
    status, headers, _ = await http(server.port, spdy_head(f"/exec/{tok}", "v9.channel.k8s.io, foo"))
    assert status == 403
    assert "v4.channel.k8s.io" in headers["x-accepted-stream-protocol-versions"]
    # The client's order wins among supported versions.
    session = await sc.SpdyRemoteCommand.connect(
        server.get_exec_url("c", sh("true")), protocols=["v3.channel.k8s.io", "v4.channel.k8s.io"]
    )
    try:
        assert session.protocol == "v3.channel.k8s.io"
        assert await session.wait() == 0
    finally:
        await session.close()
    # Port-forward speaks only portforward.k8s.io.
    tok = token(server.get_portforward_url("pod"))
    status, headers, _ = await http(server.port, spdy_head(f"/portforward/{tok}"))
    assert status == 403 and headers["x-accepted-stream-protocol-versions"] == ["portforward.k8s.io"]


async def test_websocket_handshake_failures(server: StreamingServer) -> None:
    def ws_head(path: str, extra: str) -> str:
        return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{extra}\r\n"

    key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    tok = token(server.get_exec_url("c", ["ls"]))
    status, headers, _ = await http(
        server.port, ws_head(f"/exec/{tok}", key + "Sec-WebSocket-Version: 8\r\n")
    )
    assert status == 426 and headers["sec-websocket-version"] == ["13"]
    tok = token(server.get_exec_url("c", ["ls"]))
    status, _, _ = await http(server.port, ws_head(f"/exec/{tok}", "Sec-WebSocket-Version: 13\r\n"))
    assert status == 400
    tok = token(server.get_exec_url("c", ["ls"]))
    proto = "Sec-WebSocket-Protocol: nope.k8s.io\r\n"
    status, _, _ = await http(
        server.port, ws_head(f"/exec/{tok}", key + "Sec-WebSocket-Version: 13\r\n" + proto)
    )
    assert status == 403
    tok = token(server.get_portforward_url("pod"))  # channel mode needs ports
    status, _, body = await http(
        server.port, ws_head(f"/portforward/{tok}", key + "Sec-WebSocket-Version: 13\r\n")
    )
    assert status == 400 and b"port" in body


@pytest.fixture
def cert_pair(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    async with running_server(LocalRuntime(), tls_cert_file=str(cert), tls_key_file=str(key)) as srv:
        url = srv.get_exec_url("c", sh("echo secure"))
        assert url.startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        session = await sc.SpdyRemoteCommand.connect(url, ssl_context=ctx)
        try:
            assert session.stdout is not None
            assert await session.stdout.read() == b"secure\n"
            assert await session.wait() == 0
        finally:
            await session.close()
        # A plain-HTTP client cannot talk to it.
        with pytest.raises((sc.UpgradeError, ConnectionError, asyncio.IncompleteReadError, ValueError)):
            await sc.run_command(srv.get_exec_url("c", sh("true")).replace("https://", "http://"))


async def test_wildcard_address_advertises_loopback() -> None:
    async with running_server(LocalRuntime(), address="0.0.0.0") as srv:
        assert srv.base_url == f"http://127.0.0.1:{srv.port}"
    async with running_server(LocalRuntime(), advertise_address="node.example:1234") as srv:
        assert srv.get_exec_url("c", ["ls"]).startswith("http://node.example:1234/exec/")
