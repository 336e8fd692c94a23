"""Small pure pieces: resize JSON stream, k8s status, HTTP head parsing, input buffers."""

from __future__ import annotations

import asyncio
import json

import pytest

from pycrio.streaming import status
from pycrio.streaming.backend import StreamIO, TerminalSize
from pycrio.streaming.http import BadRequest, parse_head, read_request, response
from pycrio.streaming.remotecommand import Options, ResizeDecoder, decode_channel_message, protocol_version
from pycrio.streaming.transport import InputBuffer


def test_resize_decoder_handles_split_and_concatenated_objects() -> None:
    dec = ResizeDecoder()
    assert dec.feed(b'{"Width":80,') == []
    assert dec.feed(b'"Height":24}{"width":100,"height":40}\n {"Wid') == [
        TerminalSize(80, 24),
        TerminalSize(100, 40),
    ]
    assert dec.feed(b'th":1,"Height":2}') == [TerminalSize(1, 2)]
    assert dec.feed(b'[1,2] {"Width":"x"}') == []  # not sizes: ignored


def test_resize_decoder_gives_up_on_garbage() -> None:
    dec = ResizeDecoder()
    with pytest.raises(ValueError):
        dec.feed(b"{" + b"x" * 70000)


def test_status_objects() -> None:
    assert json.loads(status.encode(status.success(), json_status=True)) == {
        "metadata": {},
        "status": "Success",
    }
    failure = status.exit_code(7)
    assert failure["reason"] == "NonZeroExitCode"
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert status.decode_exit_code(status.encode(failure, json_status=True)) == 7
    assert status.decode_exit_code(b"") == 0
    assert status.encode(status.success(), json_status=False) == b""
    assert b"exit status 7" in status.encode(failure, json_status=False)
    internal = status.internal_error("boom")
    assert internal["code"] == 500
    with pytest.raises(RuntimeError, match="boom"):
        status.decode_exit_code(status.encode(internal, json_status=True))
    with pytest.raises(RuntimeError):
        status.decode_exit_code(b"plain text error")


def test_protocol_versions_and_options() -> None:
    assert [
        protocol_version(p) for p in ("v5.channel.k8s.io", "v4.base64.channel.k8s.io", "channel.k8s.io", "")
    ] == [
        5,
        4,
        1,
        1,
    ]
    assert Options(stdin=True, stdout=True, stderr=True, tty=True).normalized().stderr is False


def test_channel_messages() -> None:
    assert decode_channel_message(b"\x01abc", False) == (1, b"abc")
    assert decode_channel_message(b"1YWJj", True) == (1, b"abc")
    with pytest.raises(ValueError):
        decode_channel_message(b"", False)


def test_parse_head() -> None:
    req = parse_head(
        b"POST /exec/abc?x=1&x=2 HTTP/1.1\r\nHost: h\r\nX-Stream-Protocol-Version: a\r\n"
        b"x-stream-protocol-version: b, c\r\nConnection: keep-alive, Upgrade"
    )
    assert req.method == "POST" and req.path == "/exec/abc" and req.query == {"x": ["1", "2"]}
    assert req.header_values("X-Stream-Protocol-Version") == ["a", "b, c"]
    assert "upgrade" in req.header_tokens("connection")
    for bad in (b"GARBAGE", b"GET / HTTP/2\r\n", b"GET / HTTP/1.1\r\nno colon here"):
        with pytest.raises(BadRequest):
            parse_head(bad)


async def test_read_request_limits() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    req = await read_request(reader)
    assert req.path == "/x"
    reader = asyncio.StreamReader()
    reader.feed_data(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadRequest):
        await read_request(reader)
    reader = asyncio.StreamReader()
    reader.feed_data(b"GET /x HTTP/1.1\r\n")
    reader.feed_eof()
    with pytest.raises(BadRequest):
        await read_request(reader)


def test_response_format() -> None:
    raw = response(404, body=b"404 page not found\n")
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n") and raw.endswith(b"\r\n\r\n404 page not found\n")
    assert b"Content-Length: 19" in raw
    assert b"Content-Length" not in response(101, [("Upgrade", "SPDY/3.1")])


async def test_input_buffer_backpressure_and_eof() -> None:
    buf = InputBuffer(high_water=10)
    buf.feed(b"0123456789ab")
    waiter = asyncio.create_task(buf.wait_drained())
    await asyncio.sleep(0)
    assert not waiter.done()
    assert await buf.read(8) == b"01234567"
    await asyncio.wait_for(waiter, 1)
    buf.feed_eof()
    assert await buf.read() == b"89ab"
    assert await buf.read() == b""


async def test_stream_io_resize_events() -> None:
    queue: asyncio.Queue[TerminalSize | None] = asyncio.Queue()
    io = StreamIO(stdin=None, stdout=None, stderr=None, tty=True, resize=queue)
    for item in (TerminalSize(1, 2), TerminalSize(3, 4), None):
        queue.put_nowait(item)
    assert io.pending_resizes() == [TerminalSize(1, 2), TerminalSize(3, 4)]
    assert [s async for s in io.resize_events()] == []
