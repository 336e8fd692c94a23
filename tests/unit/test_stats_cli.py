"""``pycrioctl stats``, ``statsp`` and ``events`` against a small fake CRI server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc
from pycrio.cli import ctl, ctl_stats
from pycrio.cli.ctl_stats import cpu_percent, human_size, parse_labels

NS = 1_000_000_000
RUNNING = "a" * 64
IDLE = "b" * 64


class FakeRuntime(api_pb2_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0
        self.filters: list[Any] = []
        self.events: list[pb.ContainerEventResponse] = []
        self.event_stream_open = threading.Event()

    def ListContainerStats(self, req: Any, ctx: Any) -> Any:
        self.calls += 1
        self.filters.append(req.filter)
        n = self.calls
        resp = pb.ListContainerStatsResponse()
        s = resp.stats.add()
        s.attributes.id, s.attributes.metadata.name = RUNNING, "web"
        s.cpu.timestamp = n * NS
        s.cpu.usage_core_nano_seconds.value = n * NS // 2  # half a core
        s.cpu.usage_nano_cores.value = NS // 4
        s.memory.working_set_bytes.value = 671744
        s.writable_layer.used_bytes.value = 8192
        s.writable_layer.inodes_used.value = 5
        idle = resp.stats.add()
        idle.attributes.id, idle.attributes.metadata.name = IDLE, "idle"
        idle.cpu.timestamp = n * NS
        return resp

    def ListPodSandboxStats(self, req: Any, ctx: Any) -> Any:
        self.calls += 1
        self.filters.append(req.filter)
        resp = pb.ListPodSandboxStatsResponse()
        s = resp.stats.add()
        s.attributes.id, s.attributes.metadata.name = "c" * 64, "pod1"
        s.linux.cpu.timestamp = self.calls * NS
        s.linux.cpu.usage_core_nano_seconds.value = self.calls * NS
        s.linux.memory.working_set_bytes.value = 2_000_000
        s.linux.network.default_interface.rx_bytes.value = 1500
        s.linux.process.process_count.value = 2
        return resp

    def GetContainerEvents(self, req: Any, ctx: Any) -> Iterator[Any]:
        self.event_stream_open.set()
        yield from self.events
        while ctx.is_active():  # a follow stream: stays open until the client goes
            time.sleep(0.01)


@pytest.fixture(autouse=True)
def only_stats_verbs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse with this module's verbs only: the tests do not depend on the other verbs' flags."""
    monkeypatch.setattr(ctl, "VERB_MODULES", [ctl_stats])


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeRuntime, str]]:
    runtime = FakeRuntime()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    sock = tmp_path / "cri.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    try:
        yield runtime, f"unix://{sock}"
    finally:
        server.stop(None)


def test_helpers() -> None:
    assert human_size(671744) == "671.7kB"
    assert human_size(0) == "0B"
    assert human_size(8192) == "8.192kB"
    assert human_size(3 * 10**9) == "3GB"
    assert parse_labels(["a=b", "c="]) == {"a": "b", "c": ""}
    with pytest.raises(SystemExit):
        parse_labels(["novalue"])
    old, new = pb.CpuUsage(timestamp=NS), pb.CpuUsage(timestamp=2 * NS)
    old.usage_core_nano_seconds.value, new.usage_core_nano_seconds.value = NS, NS + NS // 4
    assert cpu_percent(old, new) == 25.0
    new.usage_nano_cores.value = NS // 2
    assert cpu_percent(None, new) == 50.0
    assert cpu_percent(new, new) == 50.0  # no window: the runtime's own rate


def test_stats_table(fake: tuple[FakeRuntime, str], capsys: pytest.CaptureFixture[str]) -> None:
    runtime, endpoint = fake
    assert ctl.main(["-r", endpoint, "stats", "-s", "0.05", "--pod", "p1", "--label", "app=web"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CONTAINER", "NAME", "CPU", "%", "MEM", "DISK", "INODES", "SWAP"]
    assert lines[1].split() == [RUNNING[:13], "web", "50.00", "671.7kB", "8.192kB", "5", "0B"]
    assert len(lines) == 2  # the idle container is hidden without -a
    assert runtime.filters[0].pod_sandbox_id == "p1" and dict(runtime.filters[0].label_selector) == {
        "app": "web"
    }
    assert ctl.main(["-r", endpoint, "stats", "-a", "-s", "0", IDLE[:5]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[2] == "25.00"  # one sample: the runtime's usage_nano_cores
    assert out[2].split()[:2] == [IDLE[:13], "idle"]
    assert runtime.filters[-1].id == IDLE[:5]


def test_stats_watch_and_formats(fake: tuple[FakeRuntime, str], capsys: pytest.CaptureFixture[str]) -> None:
    runtime, endpoint = fake
    assert ctl.main(["-r", endpoint, "stats", "-w", "--count", "3", "-s", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("CONTAINER") == 3 and runtime.calls == 3
    assert ctl.main(["-r", endpoint, "stats", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["attributes"]["id"] for s in data["stats"]] == [RUNNING, IDLE]
    assert ctl.main(["-r", endpoint, "statsp", "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["stats"][0]["attributes"]["metadata"]["name"] == "pod1"


def test_statsp_table(fake: tuple[FakeRuntime, str], capsys: pytest.CaptureFixture[str]) -> None:
    runtime, endpoint = fake
    assert ctl.main(["-r", endpoint, "statsp", "-s", "0.05", "--id", "cc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["POD", "POD"]
    assert lines[1].split() == ["pod1", "c" * 13, "100.00", "2MB", "1.5kB", "0B", "2"]
    assert runtime.filters[0].id == "cc"


def test_events(fake: tuple[FakeRuntime, str], capsys: pytest.CaptureFixture[str]) -> None:
    runtime, endpoint = fake
    for i, kind in enumerate(
        [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_DELETED_EVENT]
    ):
        e = pb.ContainerEventResponse(container_id=f"{i}" * 64, container_event_type=kind, created_at=NS)  # type: ignore[arg-type]
        e.pod_sandbox_status.id = "p" * 64
        e.pod_sandbox_status.metadata.name, e.pod_sandbox_status.metadata.namespace = "web", "default"
        runtime.events.append(e)
    assert ctl.main(["-r", endpoint, "events", "-o", "table", "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[1:] for ln in lines] == [
        ["CREATED", "container", "0" * 13, "default/web"],
        ["STARTED", "container", "1" * 13, "default/web"],
        ["DELETED", "container", "2" * 13, "default/web"],
    ]
    assert ctl.main(["-r", endpoint, "events", "--count", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["containerEventType"] == "CONTAINER_CREATED_EVENT"


def test_unreachable_runtime_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"unix://{tmp_path}/nothing.sock"
    assert ctl.main(["-r", endpoint, "-t", "1", "stats", "-s", "0"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
