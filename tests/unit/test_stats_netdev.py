"""/proc/net/dev parsing and the namespace reader thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pycrio.stats import netdev
from pycrio.stats.netdev import NetnsReader, parse_net_dev

NET_DEV = b"""Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop ...
    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0
  eth0: 218793849    4437    1    2    0     0          0         0   209297    2321    3    4    0  0  0  0
averyverylongname0:     416       6    0    0    0     0          0         6      744       8 0 0 0 0 0 0
broken: 1 2 3
"""


def test_parse_net_dev() -> None:
    ifaces = parse_net_dev(NET_DEV)
    assert [i.name for i in ifaces] == ["lo", "eth0", "averyverylongname0"]
    eth0 = ifaces[1]
    assert (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped) == (218793849, 4437, 1, 2)
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (209297, 2321, 3, 4)
    assert ifaces[2].rx_bytes == 416 and ifaces[2].tx_bytes == 744
    assert parse_net_dev(b"") == []


def test_own_interfaces_has_loopback() -> None:
    assert "lo" in [i.name for i in netdev.own_interfaces()]


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs CAP_SYS_ADMIN")
async def test_reader_enters_a_namespace_file_and_comes_back(tmp_path: Path) -> None:
    reader = NetnsReader()
    try:
        own = f"/proc/{os.getpid()}/ns/net"
        found = await reader.read([own, str(tmp_path / "missing"), str(tmp_path)])
        assert "lo" in [i.name for i in found[own] or []]
        assert found[str(tmp_path / "missing")] is None
        assert found[str(tmp_path)] is None  # not a namespace: setns refuses
        assert await reader.read([]) == {}
    finally:
        reader.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="setns needs CAP_SYS_ADMIN")
async def test_reader_replaces_a_thread_stuck_in_a_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = NetnsReader()
    own = f"/proc/{os.getpid()}/ns/net"
    real = netdev.setns
    calls: list[int] = []

    def failing_return(fd: int, nstype: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the way back
            raise OSError(1, "denied")
        real(fd, nstype)

    try:
        monkeypatch.setattr(netdev, "setns", failing_return)
        await _worker_ident(reader)
        first_pool = reader._pool
        assert await reader.read([own]) == {own: None}
        monkeypatch.setattr(netdev, "setns", real)
        found = await reader.read([own])
        assert found[own]
        assert reader._pool is not None and reader._pool is not first_pool
    finally:
        reader.close()


async def _worker_ident(reader: NetnsReader) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(reader._executor(), threading.get_ident)
