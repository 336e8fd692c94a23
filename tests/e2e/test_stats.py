"""Container and pod stats through the real daemon: CPU, memory, writable layer, network, filters."""

from __future__ import annotations

import socket
import time

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, grpc_code, needs_host, wait_for

pytestmark = [needs_host, pytest.mark.root]

SLEEP = ["/bin/busybox", "sleep", "3600"]
# The shell runs its loop in-process: one busy process.
BURN = ["/bin/busybox", "sh", "-c", "while :; do :; done"]


def _stats(e2e: E2E, cid: str) -> pb.ContainerStats:
    resp: pb.ContainerStatsResponse = e2e.rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
    return resp.stats


def _list(e2e: E2E, **flt: object) -> list[pb.ContainerStats]:
    req = (
        pb.ListContainerStatsRequest(filter=pb.ContainerStatsFilter(**flt))
        if flt
        else pb.ListContainerStatsRequest()
    )
    return list(e2e.rt.ListContainerStats(req).stats)


def _pod_stats(e2e: E2E, pod_id: str) -> pb.PodSandboxStats:
    resp: pb.PodSandboxStatsResponse = e2e.rt.PodSandboxStats(
        pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)
    )
    return resp.stats


def test_cpu_of_a_busy_container_rises(e2e: E2E) -> None:
    pod_id, _, busy = e2e.pod_with(e2e.container_config("burn", BURN))
    try:
        first = _stats(e2e, busy)
        assert first.attributes.id == busy and first.attributes.metadata.name == "burn"
        assert first.cpu.timestamp > 0 and first.memory.timestamp > 0
        time.sleep(1.2)
        second = _stats(e2e, busy)
        used = second.cpu.usage_core_nano_seconds.value - first.cpu.usage_core_nano_seconds.value
        window = second.cpu.timestamp - first.cpu.timestamp
        assert window > 1_000_000_000
        # One spinning process on a 2-core host: well above a third of a core.
        assert used > window // 3, (used, window)
        assert second.cpu.usage_nano_cores.value > 300_000_000, second.cpu.usage_nano_cores.value
        pod = _pod_stats(e2e, pod_id)
        assert pod.linux.cpu.usage_core_nano_seconds.value >= second.cpu.usage_core_nano_seconds.value
        assert pod.linux.process.process_count.value >= 1
    finally:
        e2e.remove_pod(pod_id)


def test_memory_hog_working_set_grows(e2e: E2E) -> None:
    pod_id, _, cid = e2e.pod_with(e2e.container_config("hog", SLEEP))
    try:
        before = _stats(e2e, cid).memory
        assert before.working_set_bytes.value < 30 << 20
        # tmpfs pages are charged to the writer's cgroup and are not reclaimable file cache.
        e2e.sh(cid, "/bin/busybox dd if=/dev/zero of=/dev/shm/hog bs=1M count=40 2>/dev/null")
        after = _stats(e2e, cid).memory
        grown = after.working_set_bytes.value - before.working_set_bytes.value
        assert grown >= 35 << 20, (before, after)
        assert after.usage_bytes.value >= after.working_set_bytes.value
        assert after.available_bytes.value > 0
        pod = _pod_stats(e2e, pod_id)
        assert pod.linux.memory.working_set_bytes.value >= after.working_set_bytes.value - (1 << 20)
    finally:
        e2e.remove_pod(pod_id)


def test_writable_layer_usage(e2e: E2E) -> None:
    pod_id, _, cid = e2e.pod_with(e2e.container_config("disk", SLEEP))
    try:
        e2e.sh(
            cid,
            "/bin/busybox dd if=/dev/zero of=/data.bin bs=1M count=3 2>/dev/null;"
            " mkdir -p /d/e; touch /d/e/f",
        )
        # A container seen for the first time is measured at once.
        st = _stats(e2e, cid)
        assert st.writable_layer.used_bytes.value >= 3 << 20
        assert st.writable_layer.inodes_used.value >= 4
        assert st.writable_layer.fs_id.mountpoint
        assert st.writable_layer.timestamp > 0
    finally:
        e2e.remove_pod(pod_id)


def test_created_containers_are_listed(e2e: E2E) -> None:
    pod_cfg = e2e.pod_config()
    pod_id = e2e.run_pod(pod_cfg)
    try:
        labels = {"stats-test": "yes"}
        created = [
            e2e.create(pod_id, pod_cfg, e2e.container_config(f"c{i}", SLEEP, labels=labels)) for i in range(3)
        ]
        stats = {s.attributes.id: s for s in _list(e2e)}
        for cid in created:
            assert cid in stats, "created containers are listed with a nil filter"
            assert stats[cid].cpu.timestamp > 0 and stats[cid].memory.timestamp > 0
            assert stats[cid].attributes.labels["stats-test"] == "yes"
        assert {s.attributes.id for s in _list(e2e, pod_sandbox_id=pod_id)} == set(created)
        assert {s.attributes.id for s in _list(e2e, label_selector=labels)} == set(created)
        assert _list(e2e, label_selector={"stats-test": "no"}) == []
        assert [s.attributes.id for s in _list(e2e, id=created[1])] == [created[1]]
        assert [s.attributes.id for s in _list(e2e, id=created[1][:20])] == [created[1]]
        # An exited container is still listed, with timestamps but no cgroup numbers.
        e2e.start_ctr(created[0])
        e2e.stop_ctr(created[0])
        (ex,) = _list(e2e, id=created[0])
        assert ex.cpu.timestamp > 0 and not ex.cpu.HasField("usage_core_nano_seconds")
        # The streamed variant answers like its unary twin.
        streamed = [
            s.attributes.id
            for r in e2e.rt.StreamContainerStats(
                pb.StreamContainerStatsRequest(filter={"pod_sandbox_id": pod_id})
            )
            for s in r.container_stats
        ]
        assert sorted(streamed) == sorted(created)
    finally:
        e2e.remove_pod(pod_id)


def test_stats_errors(e2e: E2E) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.ContainerStats(pb.ContainerStatsRequest(container_id="f" * 64))
    assert grpc_code(exc) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.ContainerStats(pb.ContainerStatsRequest())
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id="f" * 64))
    assert grpc_code(exc) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        e2e.rt.PodSandboxStats(pb.PodSandboxStatsRequest())
    assert grpc_code(exc) == grpc.StatusCode.INVALID_ARGUMENT


def _send_udp(ip: str, count: int, size: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * size, (ip, 9))


def test_pod_network_counters_move(e2e: E2E) -> None:
    pod_id, _, _cid = e2e.pod_with(e2e.container_config("net", SLEEP))
    try:
        ip = e2e.pod_status(pod_id).status.network.ip
        assert ip
        before = _pod_stats(e2e, pod_id).linux.network
        assert before.default_interface.name == "eth0"
        assert "lo" not in [i.name for i in before.interfaces]
        _send_udp(ip, 200, 1000)

        def moved() -> pb.NetworkUsage | None:
            net = _pod_stats(e2e, pod_id).linux.network
            rx = net.default_interface.rx_bytes.value - before.default_interface.rx_bytes.value
            return net if rx >= 200 * 1000 else None

        after = wait_for(moved, 5, what="pod rx bytes to count the datagrams")
        assert after.default_interface.tx_bytes.value > before.default_interface.tx_bytes.value
        assert after.timestamp > before.timestamp
        listed = {
            s.attributes.id: s for s in e2e.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
        }
        assert listed[pod_id].linux.network.default_interface.rx_bytes.value >= (
            after.default_interface.rx_bytes.value
        )
        assert [c.attributes.id for c in listed[pod_id].linux.containers] == [_cid]
    finally:
        e2e.remove_pod(pod_id)


def test_pod_stats_filters_and_stopped_pods(e2e: E2E) -> None:
    cfg_a, cfg_b = e2e.pod_config(), e2e.pod_config()
    cfg_a.labels["team"] = "a"
    cfg_b.labels["team"] = "b"
    pod_a, pod_b = e2e.run_pod(cfg_a), e2e.run_pod(cfg_b)
    try:

        def ids(**flt: object) -> set[str]:
            req = pb.ListPodSandboxStatsRequest(filter=pb.PodSandboxStatsFilter(**flt))
            return {s.attributes.id for s in e2e.rt.ListPodSandboxStats(req).stats}

        assert ids(label_selector={"team": "a"}) == {pod_a}
        assert ids(id=pod_b[:16]) == {pod_b}
        e2e.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_b))
        stopped = _pod_stats(e2e, pod_b)
        assert stopped.attributes.metadata.name == cfg_b.metadata.name
        assert not stopped.linux.network.HasField("default_interface")
        assert stopped.linux.cpu.timestamp > 0
        streamed = [
            s.attributes.id
            for r in e2e.rt.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(filter={"id": pod_a}))
            for s in r.pod_sandbox_stats
        ]
        assert streamed == [pod_a]
    finally:
        e2e.remove_pod(pod_a)
        e2e.remove_pod(pod_b)
