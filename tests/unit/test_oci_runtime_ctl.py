"""The ctl fifo protocol and log reopening, against a scripted stand-in for conmon."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pycrio.errors import DeadlineExceeded
from pycrio.oci import ctl
from pycrio.oci.runc import ContainerNotRunning


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir()
    os.mkfifo(b / "ctl")
    return b


def test_ctl_lines() -> None:
    assert ctl.ctl_line(ctl.RESIZE, 24, 80) == b"1 24 80\n"
    assert ctl.ctl_line(ctl.REOPEN_LOG) == b"2 0 0\n"


def test_write_ctl_without_reader(bundle: Path, tmp_path: Path) -> None:
    # No conmon reading the fifo: an error at once, never a hang.
    with pytest.raises(ContainerNotRunning):
        ctl.write_ctl(bundle, "c1", b"1 1 1\n")
    with pytest.raises(ContainerNotRunning):
        ctl.write_ctl(tmp_path / "nobundle", "c1", b"1 1 1\n")


async def test_reopen_like_conmon(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "c.log"
    log.parent.mkdir()
    log.write_text("old\n")
    rfd = os.open(bundle / "ctl", os.O_RDONLY | os.O_NONBLOCK)
    # Like conmon, hold a writer too, so the fifo never reports EOF.
    dummy = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    got: list[bytes] = []

    def conmon_reads() -> None:
        data = os.read(rfd, 200)
        got.append(data)
        # conmon: create <log>.tmp, rename it over <log>.
        tmp = log.with_name(log.name + ".tmp")
        tmp.write_text("")
        os.rename(tmp, log)

    loop.add_reader(rfd, conmon_reads)
    try:
        await ctl.reopen_log(bundle, log, "c1", 5)
        assert got == [b"2 0 0\n"]
        assert log.read_text() == ""
        ctl.write_ctl(bundle, "c1", ctl.ctl_line(ctl.RESIZE, 3, 4))
    finally:
        loop.remove_reader(rfd)
        os.close(rfd)
        os.close(dummy)


async def test_reopen_ignored_times_out_or_sees_conmon_exit(bundle: Path, tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text("x\n")
    rfd = os.open(bundle / "ctl", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(DeadlineExceeded):
            await ctl.reopen_log(bundle, log, "c1", 0.1)
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.05, gone.set_result, None)
        with pytest.raises(ContainerNotRunning):
            await ctl.reopen_log(bundle, log, "c1", 10, gone)
    finally:
        os.close(rfd)


def test_connect_attach_errors(tmp_path: Path) -> None:
    with pytest.raises(ContainerNotRunning):
        ctl.connect_attach(tmp_path / "none" / "attach", "c1")
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    with pytest.raises(ContainerNotRunning):
        ctl.connect_attach(deep / "attach", "c1")


def test_connect_attach_long_path(tmp_path: Path) -> None:
    import socket

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    cwd = os.getcwd()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        # Bind relative to the directory: the full path is too long for sun_path.
        os.chdir(deep)
        srv.bind("attach")
        srv.listen(1)
    finally:
        os.chdir(cwd)
    try:
        assert len(str(deep / "attach")) > 108
        c = ctl.connect_attach(deep / "attach", "c1")
        conn, _ = srv.accept()
        conn.send(b"\x02hi")
        c.setblocking(True)
        assert c.recv(100) == b"\x02hi"
        c.close()
        conn.close()
    finally:
        srv.close()
