#!/usr/bin/env python3
"""Stats benchmark: ListContainerStats and ListPodSandboxStats on a node with 100 running
containers, pycrio against containerd's CRI.

Each runtime in turn (never both at once, so they do not share the CPU) gets ``--pods``
pods with one busybox ``sleep`` container each, on its own CNI bridge, then answers
``--calls`` ListContainerStats and ``--calls`` ListPodSandboxStats requests, one after
the other, after ``--warmup`` untimed ones. The median (and p90) wall time per call
is reported, side by side with the ratio pycrio/containerd; the issue asks for at
most containerd's time. Every answer is checked to hold every container (pod) with
CPU and memory numbers, so both runtimes do the same work.

The shared harness is bench/common.py (registry, networks, runtimes, cleanup) and
bench/containerd.py (the private containerd). Run as root:
``.venv/bin/python bench/stats.py [--pods 100] [--calls 20] [--only pycrio|containerd]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.common import BUSYBOX_SLEEP, Images, Row, Runtime, log, median, percentile
from bench.containerd import installed as containerd_installed
from pycrio.api import api_pb2 as pb

RPC_TIMEOUT = 60.0


@dataclass
class Timings:
    containers: list[float] = field(default_factory=list)
    pods: list[float] = field(default_factory=list)


async def make_pods(rt: Runtime, image: str, n: int, parallel: int = 4) -> None:
    sem = asyncio.Semaphore(parallel)
    done = 0

    async def one() -> None:
        nonlocal done
        async with sem:
            await common.start_pod(rt, image, BUSYBOX_SLEEP)
            done += 1
            if done % 25 == 0:
                log(f"  {rt.name}: {done}/{n} pods running")

    await asyncio.gather(*(one() for _ in range(n)))


def check_containers(resp: pb.ListContainerStatsResponse, n: int) -> None:
    if len(resp.stats) != n:
        raise RuntimeError(f"ListContainerStats returned {len(resp.stats)} containers, expected {n}")
    for s in resp.stats:
        if not s.cpu.timestamp or not s.memory.HasField("working_set_bytes"):
            raise RuntimeError(f"container {s.attributes.id[:12]} has no cpu/memory stats: {s}")


def check_pods(resp: pb.ListPodSandboxStatsResponse, n: int) -> None:
    if len(resp.stats) != n:
        raise RuntimeError(f"ListPodSandboxStats returned {len(resp.stats)} pods, expected {n}")
    for s in resp.stats:
        if not s.linux.cpu.timestamp or len(s.linux.containers) != 1:
            raise RuntimeError(f"pod {s.attributes.id[:12]} has incomplete stats: {s}")


async def measure(rt: Runtime, n: int, calls: int, warmup: int) -> Timings:
    t = Timings()
    loop = asyncio.get_running_loop()
    for i in range(warmup + calls):
        t0 = loop.time()
        cresp = await rt.rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=RPC_TIMEOUT)
        t1 = loop.time()
        if i >= warmup:
            t.containers.append(t1 - t0)
        check_containers(cresp, n)
    for i in range(warmup + calls):
        t0 = loop.time()
        presp = await rt.rt.ListPodSandboxStats(pb.ListPodSandboxStatsRequest(), timeout=RPC_TIMEOUT)
        t1 = loop.time()
        if i >= warmup:
            t.pods.append(t1 - t0)
        check_pods(presp, n)
    return t


async def bench_one(rt: Runtime, images: Images, args: argparse.Namespace) -> Timings:
    log(f"{rt.name}: starting")
    await rt.start()
    await rt.pull(images.busybox)
    t0 = time.monotonic()
    await make_pods(rt, images.busybox, args.pods)
    log(f"{rt.name}: {args.pods} pods in {time.monotonic() - t0:.1f}s; measuring")
    timings = await measure(rt, args.pods, args.calls, args.warmup)
    log(
        f"{rt.name}: ListContainerStats median {median(timings.containers) * 1000:.2f} ms, "
        f"ListPodSandboxStats median {median(timings.pods) * 1000:.2f} ms"
    )
    return timings


async def run(args: argparse.Namespace) -> int:
    names = [n for n in ("pycrio", "containerd") if args.only in (None, n)]
    if "containerd" in names and not containerd_installed():
        log("containerd is not installed; measuring pycrio only")
        names.remove("containerd")
    base = Path(tempfile.mkdtemp(prefix="pycrio-bench-stats-", dir=args.workdir))
    images: Images | None = None
    runtimes: list[Runtime] = []
    results: dict[str, Timings] = {}
    try:
        images = await asyncio.to_thread(common.setup_images, base)
        runtimes = common.make_runtimes(base, images, names)
        for rt in runtimes:
            try:
                results[rt.name] = await bench_one(rt, images, args)
            finally:
                log(f"{rt.name}: removing {args.pods} pods")
                await rt.close()
    finally:
        await common.bench_context_close(runtimes, images, base)
    p, c = results.get("pycrio", Timings()), results.get("containerd", Timings())
    ms = 1000.0
    rows = [
        Row(f"ListContainerStats, {args.pods} ctrs, median", median(p.containers) * ms,
            median(c.containers) * ms, "ms", "<= 1.0"),
        Row(f"ListContainerStats, {args.pods} ctrs, p90", percentile(p.containers, 90) * ms,
            percentile(c.containers, 90) * ms, "ms"),
        Row(f"ListPodSandboxStats, {args.pods} pods, median", median(p.pods) * ms, median(c.pods) * ms,
            "ms", "<= 1.0"),
        Row(f"ListPodSandboxStats, {args.pods} pods, p90", percentile(p.pods, 90) * ms,
            percentile(c.pods, 90) * ms, "ms"),
    ]  # fmt: skip
    common.print_table(f"Stats RPCs ({args.calls} calls each after {args.warmup} warm-up)", rows)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pods", type=int, default=100, help="pods, one running container each (default 100)"
    )
    parser.add_argument("--calls", type=int, default=20, help="timed calls per RPC (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--only", choices=("pycrio", "containerd"), default=None)
    parser.add_argument("--workdir", default="/tmp", help="where the runtimes' directories go (default /tmp)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/stats.py must run as root (it runs pods)", file=sys.stderr)
        return 2
    return common.run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
