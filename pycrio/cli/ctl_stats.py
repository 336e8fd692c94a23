"""``pycrioctl stats``, ``pycrioctl statsp`` and ``pycrioctl events``.

``stats``/``statsp`` take two samples ``--seconds`` apart and show the CPU
used in between, as crictl does (``--seconds 0``: one sample, the runtime's
own rate); ``--watch`` repeats until interrupted (or ``--count`` times).
``events`` follows GetContainerEvents and prints each event as it comes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.cli.client import Client
from pycrio.cli.output import emit, table, to_dict, truncate_id

CLEAR = "\x1b[2J\x1b[H"


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="resource usage of containers")
    p.add_argument("id", nargs="?", default="", help="container id (prefix)")
    p.add_argument(
        "-a", "--all", action="store_true", help="show all containers (default: those using resources)"
    )
    p.add_argument("--id", dest="id_flag", default="", help="filter by container id (prefix)")
    p.add_argument("-p", "--pod", default="", help="filter by pod id (prefix)")
    _common(p)
    p.set_defaults(func=stats)
    p = sub.add_parser("statsp", help="resource usage of pods")
    p.add_argument("id", nargs="?", default="", help="pod id (prefix)")
    p.add_argument("--id", dest="id_flag", default="", help="filter by pod id (prefix)")
    _common(p)
    p.set_defaults(func=statsp)
    p = sub.add_parser("events", help="follow container events (GetContainerEvents)")
    p.add_argument("-o", "--output", choices=["json", "yaml", "table"], default="json")
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many events (0: follow until interrupted)"
    )
    p.set_defaults(func=events)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", action="append", default=[], help="filter by key=value label (repeatable)")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.add_argument(
        "-s", "--seconds", type=float, default=1.0, help="CPU sample window in seconds (default 1)"
    )
    p.add_argument("-w", "--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after this many refreshes")


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"pycrioctl: --label must be key=value, got {item!r}")
        out[key] = value
    return out


def human_size(n: float) -> str:
    """Decimal units with four significant digits, as crictl prints them (``671.7kB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}PB"  # pragma: no cover - loop always returns


def cpu_percent(old: pb.CpuUsage | None, new: pb.CpuUsage) -> float:
    """CPU use between two samples in percent of one core; the runtime's rate without an old one."""
    if old is None:
        return new.usage_nano_cores.value / 1e7
    window = new.timestamp - old.timestamp
    if window <= 0:
        return new.usage_nano_cores.value / 1e7
    used = new.usage_core_nano_seconds.value - old.usage_core_nano_seconds.value
    return max(0.0, used / window * 100)


def _loop(args: argparse.Namespace, once: Callable[[bool], None]) -> int:
    """Run ``once`` (a sample and a table) once, or repeatedly with --watch."""
    rounds = 0
    while True:
        once(args.watch and sys.stdout.isatty())
        rounds += 1
        if not args.watch or (args.count and rounds >= args.count):
            return 0


def _sampled(
    args: argparse.Namespace, fetch: Callable[[], list[Any]], key: Callable[[Any], str]
) -> tuple[dict[str, Any], list[Any]]:
    """(first sample by id, second sample) ``--seconds`` apart; no first one for 0 s."""
    if args.seconds <= 0:
        return {}, fetch()
    first = {key(s): s for s in fetch()}
    time.sleep(args.seconds)
    return first, fetch()


# -- stats ---------------------------------------------------------------------------------------


def stats(client: Client, args: argparse.Namespace) -> int:
    flt = pb.ContainerStatsFilter(
        id=args.id_flag or args.id, pod_sandbox_id=args.pod, label_selector=parse_labels(args.label)
    )

    def fetch() -> list[pb.ContainerStats]:
        resp = client.runtime.ListContainerStats(
            pb.ListContainerStatsRequest(filter=flt), timeout=args.timeout
        )
        return sorted(resp.stats, key=lambda s: s.attributes.id)

    if args.output != "table":
        emit(to_dict(pb.ListContainerStatsResponse(stats=fetch())), args.output)
        return 0

    def once(clear: bool) -> None:
        first, current = _sampled(args, fetch, lambda s: s.attributes.id)
        rows = []
        for s in current:
            cpu, mem = s.cpu.usage_core_nano_seconds.value, s.memory.working_set_bytes.value
            if not args.all and cpu == 0 and mem == 0:
                continue  # not running
            if first and s.attributes.id not in first:
                continue  # appeared during the sample
            rows.append(
                [
                    truncate_id(s.attributes.id, False),
                    s.attributes.metadata.name,
                    f"{cpu_percent(first[s.attributes.id].cpu if first else None, s.cpu):.2f}",
                    human_size(mem),
                    human_size(s.writable_layer.used_bytes.value),
                    s.writable_layer.inodes_used.value,
                    human_size(s.swap.swap_usage_bytes.value),
                ]
            )
        if clear:
            sys.stdout.write(CLEAR)
        table(["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES", "SWAP"], rows)
        sys.stdout.flush()

    return _loop(args, once)


def statsp(client: Client, args: argparse.Namespace) -> int:
    flt = pb.PodSandboxStatsFilter(id=args.id_flag or args.id, label_selector=parse_labels(args.label))

    def fetch() -> list[pb.PodSandboxStats]:
        resp = client.runtime.ListPodSandboxStats(
            pb.ListPodSandboxStatsRequest(filter=flt), timeout=args.timeout
        )
        return sorted(resp.stats, key=lambda s: s.attributes.id)

    if args.output != "table":
        emit(to_dict(pb.ListPodSandboxStatsResponse(stats=fetch())), args.output)
        return 0

    def once(clear: bool) -> None:
        first, current = _sampled(args, fetch, lambda s: s.attributes.id)
        rows = []
        for s in current:
            linux = s.linux
            if first and s.attributes.id not in first:
                continue
            old = first[s.attributes.id].linux.cpu if first else None
            net = linux.network.default_interface
            rows.append(
                [
                    s.attributes.metadata.name,
                    truncate_id(s.attributes.id, False),
                    f"{cpu_percent(old, linux.cpu):.2f}",
                    human_size(linux.memory.working_set_bytes.value),
                    human_size(net.rx_bytes.value),
                    human_size(net.tx_bytes.value),
                    linux.process.process_count.value,
                ]
            )
        if clear:
            sys.stdout.write(CLEAR)
        table(["POD", "POD ID", "CPU %", "MEM", "NET RX", "NET TX", "PROCS"], rows)
        sys.stdout.flush()

    return _loop(args, once)


# -- events --------------------------------------------------------------------------------------

_EVENT_NAMES = {
    v: k.removeprefix("CONTAINER_").removesuffix("_EVENT") for k, v in pb.ContainerEventType.items()
}


def event_line(ev: pb.ContainerEventResponse) -> str:
    """One line per event: time, type, container (or sandbox) id, pod namespace/name."""
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ev.created_at / 1e9))
    md = ev.pod_sandbox_status.metadata
    pod = f"{md.namespace}/{md.name}" if md.name else "-"
    what = "sandbox" if ev.container_id == ev.pod_sandbox_status.id else "container"
    kind = _EVENT_NAMES.get(ev.container_event_type, str(ev.container_event_type))
    return f"{ts}  {kind:<8} {what:<9} {truncate_id(ev.container_id, False)}  {pod}"


def events(client: Client, args: argparse.Namespace) -> int:
    call = client.runtime.GetContainerEvents(pb.GetEventsRequest())
    seen = 0
    try:
        for ev in call:
            if args.output == "table":
                sys.stdout.write(event_line(ev) + "\n")
            else:
                emit(to_dict(ev), args.output)
            sys.stdout.flush()
            seen += 1
            if args.count and seen >= args.count:
                break
    finally:
        call.cancel()
    return 0
