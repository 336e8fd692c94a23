"""Samples to CRI stats messages.

Messages are filled in place (``msg.cpu.usage_core_nano_seconds.value = ...``):
a ListContainerStats answer is built directly inside the response, with no
intermediate message copied into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.stats.cgroup import Psi, Sample
from pycrio.stats.netdev import Interface

# The interface the kubelet treats as the pod's own (CNI's conventional name).
DEFAULT_INTERFACE = "eth0"


def _psi(msg: pb.PsiStats, lines: dict[str, Psi]) -> None:
    for kind, dst in (("full", msg.Full), ("some", msg.Some)):
        p = lines.get(kind)
        if p is not None:
            dst.Total = p.total_ns
            dst.Avg10 = p.avg10
            dst.Avg60 = p.avg60
            dst.Avg300 = p.avg300


def fill_cpu(msg: pb.CpuUsage, s: Sample, nano_cores: int | None) -> None:
    msg.timestamp = s.timestamp_ns
    if s.cpu_usage_ns is not None:
        msg.usage_core_nano_seconds.value = s.cpu_usage_ns
    if nano_cores is not None:
        msg.usage_nano_cores.value = nano_cores
    psi = s.psi.get("cpu")
    if psi:
        _psi(msg.psi, psi)


def fill_memory(msg: pb.MemoryUsage, s: Sample, node_memory: int) -> None:
    msg.timestamp = s.timestamp_ns
    ws = s.memory_working_set
    if ws is not None:
        msg.working_set_bytes.value = ws
        limit = s.memory_limit if s.memory_limit is not None else node_memory
        if limit:
            msg.available_bytes.value = max(0, limit - ws)
    if s.memory_usage is not None:
        msg.usage_bytes.value = s.memory_usage
    if s.memory_rss is not None:
        msg.rss_bytes.value = s.memory_rss
    if s.memory_page_faults is not None:
        msg.page_faults.value = s.memory_page_faults
    if s.memory_major_page_faults is not None:
        msg.major_page_faults.value = s.memory_major_page_faults
    psi = s.psi.get("memory")
    if psi:
        _psi(msg.psi, psi)


def fill_swap(msg: pb.SwapUsage, s: Sample) -> None:
    msg.timestamp = s.timestamp_ns
    if s.swap_usage is not None:
        msg.swap_usage_bytes.value = s.swap_usage
        if s.swap_limit is not None:
            msg.swap_available_bytes.value = max(0, s.swap_limit - s.swap_usage)


def fill_io(msg: pb.IoUsage, s: Sample) -> None:
    psi = s.psi.get("io")
    if psi:
        msg.timestamp = s.timestamp_ns
        _psi(msg.psi, psi)


def fill_container_attributes(msg: pb.ContainerAttributes, cid: str, cfg: pb.ContainerConfig) -> None:
    msg.id = cid
    msg.metadata.name = cfg.metadata.name
    msg.metadata.attempt = cfg.metadata.attempt
    msg.labels.update(cfg.labels)
    msg.annotations.update(cfg.annotations)


def fill_pod_attributes(msg: pb.PodSandboxAttributes, pod_id: str, cfg: pb.PodSandboxConfig) -> None:
    msg.id = pod_id
    msg.metadata.CopyFrom(cfg.metadata)
    msg.labels.update(cfg.labels)
    msg.annotations.update(cfg.annotations)


def fill_usage(
    msg: Any, s: Sample | None, now_ns: int, nano_cores: int | None, node_memory: int, swap: bool = True
) -> None:
    """cpu, memory (and swap, io) of a ContainerStats or LinuxPodSandboxStats; only
    timestamps when there is no cgroup to read (the container is not running)."""
    if s is None:
        msg.cpu.timestamp = now_ns
        msg.memory.timestamp = now_ns
        return
    fill_cpu(msg.cpu, s, nano_cores)
    fill_memory(msg.memory, s, node_memory)
    if swap:
        fill_swap(msg.swap, s)
    fill_io(msg.io, s)


def fill_writable_layer(msg: pb.FilesystemUsage, mountpoint: str, ts_ns: int, used: int, inodes: int) -> None:
    msg.timestamp = ts_ns
    msg.fs_id.mountpoint = mountpoint
    msg.used_bytes.value = used
    msg.inodes_used.value = inodes


def _iface(msg: pb.NetworkInterfaceUsage, i: Interface) -> None:
    msg.name = i.name
    msg.rx_bytes.value = i.rx_bytes
    msg.rx_errors.value = i.rx_errors
    msg.tx_bytes.value = i.tx_bytes
    msg.tx_errors.value = i.tx_errors


def pod_interfaces(ifaces: Sequence[Interface]) -> list[Interface]:
    """The pod's own interfaces: every one but loopback."""
    return [i for i in ifaces if i.name != "lo"]


def fill_network(msg: pb.NetworkUsage, ifaces: Sequence[Interface], ts_ns: int) -> None:
    own = pod_interfaces(ifaces)
    if not own:
        return
    msg.timestamp = ts_ns
    default = next((i for i in own if i.name == DEFAULT_INTERFACE), own[0])
    _iface(msg.default_interface, default)
    for i in own:
        _iface(msg.interfaces.add(), i)
