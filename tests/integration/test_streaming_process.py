"""run_bridged with real processes and an in-memory StreamIO."""

from __future__ import annotations

import asyncio
import os

import pytest

from pycrio.streaming.backend import StreamIO, TerminalSize
from pycrio.streaming.process import ClientGoneError, run_bridged
from pycrio.streaming.transport import InputBuffer
from tests.integration.test_streaming_exec import BUSYBOX, ENV, alive, sh, wait_gone

pytestmark = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox-static")


class Sink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.data = bytearray()
        self.closed = False
        self.fail_after = fail_after
        self.got_data = asyncio.Event()

    async def write(self, data: bytes) -> None:
        if self.fail_after is not None and len(self.data) >= self.fail_after:
            raise ConnectionResetError("client gone")
        self.data += data
        self.got_data.set()

    async def close(self) -> None:
        self.closed = True


def make_io(
    stdin: bytes | None = None, tty: bool = False, out: Sink | None = None
) -> tuple[StreamIO, Sink, Sink]:
    source = None
    if stdin is not None:
        source = InputBuffer()
        source.feed(stdin)
        source.feed_eof()
    out = out or Sink()
    err = Sink()
    resize: asyncio.Queue[TerminalSize | None] = asyncio.Queue()
    io = StreamIO(stdin=source, stdout=out, stderr=None if tty else err, tty=tty, resize=resize)
    return io, out, err


async def test_pipes_exit_code_and_separate_streams() -> None:
    io, out, err = make_io()
    code = await run_bridged(sh("echo a; echo b >&2; exit 4"), False, False, io, env=ENV)
    assert (code, bytes(out.data), bytes(err.data)) == (4, b"a\n", b"b\n")


async def test_signal_exit_code() -> None:
    io, _, _ = make_io()
    assert await run_bridged(sh("kill -9 $$"), False, False, io, env=ENV) == 137


async def test_stdin_end_closes_the_pipe() -> None:
    io, out, _ = make_io(stdin=b"abc" * 100000)
    assert await run_bridged([BUSYBOX, "cat"], False, True, io, env=ENV) == 0
    assert bytes(out.data) == b"abc" * 100000


async def test_no_stdin_requested_gives_dev_null() -> None:
    io, out, _ = make_io(stdin=b"ignored")
    assert await run_bridged([BUSYBOX, "cat"], False, False, io, env=ENV) == 0
    assert out.data == b""


async def test_tty_merges_output_and_ends_input_with_eof_char() -> None:
    io, out, _ = make_io(stdin=b"typed\n", tty=True)
    code = await run_bridged(sh(f"{BUSYBOX} cat; echo err >&2; {BUSYBOX} tty"), True, True, io, env=ENV)
    assert code == 0
    text = bytes(out.data)
    assert b"typed" in text and b"err" in text and b"/dev/pts/" in text


async def test_tty_initial_size_and_resize() -> None:
    io, out, _ = make_io(stdin=b"\n", tty=True)
    io._resize.put_nowait(TerminalSize(77, 33))
    code = await run_bridged(sh(f"{BUSYBOX} stty size; read x"), True, True, io, env=ENV)
    assert code == 0 and b"33 77" in bytes(out.data)


async def test_client_gone_kills_the_process_group() -> None:
    io, out, _ = make_io()
    task = asyncio.create_task(
        run_bridged(sh(f"{BUSYBOX} sleep 1000 & echo $!; wait"), False, False, io, env=ENV)
    )
    await asyncio.wait_for(out.got_data.wait(), 10)
    child = int(bytes(out.data).split()[0])
    assert alive(child)
    io.client_gone.set()
    with pytest.raises(ClientGoneError):
        await asyncio.wait_for(task, 10)
    await wait_gone(child)


async def test_failed_write_kills_the_process() -> None:
    io, _, _ = make_io(out=Sink(fail_after=1))
    with pytest.raises(ClientGoneError):
        await asyncio.wait_for(run_bridged(sh("while :; do echo y; done"), False, False, io, env=ENV), 10)


@pytest.mark.parametrize("tty", [False, True])
async def test_cancellation_kills_the_process(tty: bool) -> None:
    io, out, _ = make_io(tty=tty)
    task = asyncio.create_task(
        run_bridged(sh(f"echo $$; exec {BUSYBOX} sleep 1000"), tty, False, io, env=ENV)
    )
    await asyncio.wait_for(out.got_data.wait(), 10)
    pid = int(bytes(out.data).split()[0])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_gone(pid)


async def test_background_child_holding_the_pipe_does_not_hang() -> None:
    io, out, _ = make_io()
    code = await asyncio.wait_for(
        run_bridged(sh(f"echo done; {BUSYBOX} sleep 1000 &"), False, False, io, env=ENV, drain_grace=0.2), 10
    )
    assert code == 0 and bytes(out.data) == b"done\n"


@pytest.mark.parametrize("tty", [False, True])
async def test_missing_command(tty: bool) -> None:
    io, _, _ = make_io(tty=tty)
    with pytest.raises(FileNotFoundError):
        await run_bridged(["no-such-command-pycrio"], tty, False, io, env=ENV)
    with pytest.raises(ValueError):
        await run_bridged([], tty, False, io)
