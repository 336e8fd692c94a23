#!/usr/bin/env python3
"""Pod lifecycle benchmark: pycrio against containerd, side by side, through the CRI.

Both runtimes run at once, each on its own socket, root and CNI network (same
plugins, same conflist shape: bridge + host-local + portmap + loopback), and get
identical CRI request sequences from this process (pycrio's gRPC stubs). Phases:

1. start: one pod + one busybox container, RunPodSandbox .. StartContainer returned
   (``--runs`` times, runtimes alternating), then stop + remove (StopContainer with no
   grace, RemoveContainer, StopPodSandbox, RemovePodSandbox);
2. exec: ExecSync of ``echo hi`` in a running container (``--exec-runs`` times);
3. cni: the same start/stop with the CNI plugins wrapped by scripts that log the
   start and end of each call: the wall time covered by ADD (DEL) calls of a pod, next
   to the pod's start (stop) time; plus start latency of hostNetwork pods (no CNI);
4. concurrent: ``--pods`` pods started with ``--concurrency`` at a time (pods/s), the
   host's and the daemon's CPU time per pod, then daemon and monitor memory with those
   pods running (RSS and PSS from /proc/<pid>/smaps_rollup; pycrio: daemon + conmons;
   containerd: containerd + shims);
5. list: ``--containers`` created (not started) containers over 10 pods, then the
   median of ``--list-runs`` ListContainers calls.

A CRI error in pod starts of phase 4 or container creations of phase 5 is retried
once (as the kubelet would) and listed after the table; a phase that fails anyway is
reported and skipped, the other phases still run (exit code 1).

Noise on these machines is large: only the ratios (pycrio / containerd, same run)
count. Run as root from the repo root: ``.venv/bin/python bench/lifecycle.py``
(``--help`` for the knobs). Everything started is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import containerd as ctrd
from bench.common import (
    BUSYBOX_SLEEP,
    Images,
    Pod,
    Row,
    Runtime,
    bench_context_close,
    container_config,
    create_container,
    log,
    make_runtimes,
    median,
    percentile,
    pod_config,
    print_table,
    remove_pod,
    run_main,
    run_pod,
    setup_images,
    start_pod,
)
from bench.host import PluginCall, host_cpu_seconds, memory_kb, process_cpu_seconds
from pycrio.api import api_pb2 as pb

T = TypeVar("T")
PHASES = ("start", "exec", "cni", "concurrent", "list")
SETTLE = 2.0  # seconds before memory is read


def ms(x: float) -> float:
    return x * 1000.0


def order(runtimes: list[Runtime], i: int) -> list[Runtime]:
    """Alternate who goes first, so neither always runs right after the other."""
    return runtimes if i % 2 == 0 else runtimes[::-1]


async def bounded(n: int, jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``jobs`` (not yet started coroutines) at most ``n`` at a time."""
    sem = asyncio.Semaphore(n)

    async def one(job: Awaitable[T]) -> T:
        async with sem:
            return await job

    tasks = [asyncio.ensure_future(one(j)) for j in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:  # one failed or we are cancelled: stop the others before going on
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for j in jobs:  # the ones that never started (closing a finished one does nothing)
            if isinstance(j, Coroutine):
                j.close()
        raise


FAILURES: list[str] = []


def describe(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return repr(e)


async def remove_all(rt: Runtime) -> bool:
    """Remove every pod of ``rt`` through the CRI, retrying once (as the kubelet would);
    a failure is reported, not raised."""
    for attempt in (1, 2):
        try:
            await rt.remove_all_pods()
            return attempt == 1
        except Exception as e:
            FAILURES.append(f"{rt.name}: removing pods (attempt {attempt}): {describe(e)}")
            log(f"  {rt.name}: removing pods failed (attempt {attempt}): {describe(e)}")
    return False


async def retrying(rt: Runtime, what: str, make: Callable[[], Awaitable[T]]) -> T:
    """``make()``, retried once after a CRI error (as the kubelet would); the error is reported."""
    try:
        return await make()
    except grpc.aio.AioRpcError as e:
        FAILURES.append(f"{rt.name}: {what} (retried): {describe(e)}")
        log(f"  {rt.name}: {what} failed, retrying: {describe(e)}")
    return await make()


# -- phases -----------------------------------------------------------------------------------------------


Results = dict[str, dict[str, list[float]]]  # runtime -> measure -> values


async def phase_start(runtimes: list[Runtime], images: Images, runs: int) -> Results:
    out: Results = {rt.name: {} for rt in runtimes}
    for i in range(runs):
        for rt in order(runtimes, i):
            pod = await start_pod(rt, images.busybox, BUSYBOX_SLEEP)
            stop = await remove_pod(rt, pod)
            res = out[rt.name]
            for key, val in (("start", pod.total), ("run", pod.run), ("create", pod.create),
                             ("startc", pod.start), ("stop", stop)):
                res.setdefault(key, []).append(val)
        log(f"  start run {i + 1}/{runs}: " + "  ".join(
            f"{rt.name} {ms(out[rt.name]['start'][-1]):.0f}/{ms(out[rt.name]['stop'][-1]):.0f} ms"
            for rt in runtimes))
    return out


async def phase_exec(runtimes: list[Runtime], images: Images, runs: int) -> Results:
    pods = {rt.name: await start_pod(rt, images.busybox, BUSYBOX_SLEEP) for rt in runtimes}
    out: Results = {rt.name: {"exec": []} for rt in runtimes}
    try:
        for i in range(runs + 2):
            for rt in order(runtimes, i):
                cid = pods[rt.name].container_id
                req = pb.ExecSyncRequest(container_id=cid, cmd=["echo", "hi"], timeout=10)
                t0 = time.perf_counter()
                resp = await rt.rt.ExecSync(req, timeout=30)
                t = time.perf_counter() - t0
                if resp.exit_code != 0 or resp.stdout != b"hi\n":
                    raise RuntimeError(f"{rt.name}: ExecSync gave {resp.exit_code} {resp.stdout!r}")
                if i >= 2:  # the first two are warm-up
                    out[rt.name]["exec"].append(t)
    finally:
        for rt in runtimes:
            await remove_pod(rt, pods[rt.name])
    return out


def busy_time(calls: list[PluginCall]) -> float:
    """Wall time during which at least one of ``calls`` ran (overlaps counted once)."""
    total, end = 0.0, -math.inf
    for c in sorted(calls, key=lambda c: c.start):
        if c.end > end:
            total += c.end - max(c.start, end)
            end = c.end
    return total


async def phase_cni(runtimes: list[Runtime], images: Images, runs: int) -> Results:
    plugins = runtimes[0].plugin_dir
    out: Results = {rt.name: {} for rt in runtimes}
    made: dict[str, list[tuple[Pod, float]]] = {rt.name: [] for rt in runtimes}
    plugins.timing(True)
    try:
        for i in range(runs):
            for rt in order(runtimes, i):
                pod = await start_pod(rt, images.busybox, BUSYBOX_SLEEP)
                made[rt.name].append((pod, await remove_pod(rt, pod)))
    finally:
        plugins.timing(False)
    calls = plugins.calls()
    for rt in runtimes:
        res = out[rt.name]
        for pod, stop in made[rt.name]:
            mine = [c for c in calls if c.container_id == pod.id]
            res.setdefault("start", []).append(pod.total)
            res.setdefault("stop", []).append(stop)
            res.setdefault("add", []).append(busy_time([c for c in mine if c.command == "ADD"]))
            res.setdefault("del", []).append(busy_time([c for c in mine if c.command == "DEL"]))
            res.setdefault("calls", []).append(float(len(mine)))
            adds = [c for c in mine if c.command == "ADD"]
            if adds:  # the runtime's own time between its plugin calls
                span = max(c.end for c in adds) - min(c.start for c in adds)
                res.setdefault("add_gaps", []).append(span - busy_time(adds))
    # hostNetwork pods: no CNI at all
    for i in range(runs):
        for rt in order(runtimes, i):
            pod = await start_pod(rt, images.busybox, BUSYBOX_SLEEP, host_network=True)
            out[rt.name].setdefault("hoststart", []).append(pod.total)
            out[rt.name].setdefault("hoststop", []).append(await remove_pod(rt, pod))
    return out


async def phase_concurrent(
    runtimes: list[Runtime], images: Images, pods: int, concurrency: int, rounds: int
) -> Results:
    out: Results = {rt.name: {} for rt in runtimes}
    for r in range(rounds):
        for rt in order(runtimes, r):
            res = out[rt.name]
            cpu = [host_cpu_seconds(), process_cpu_seconds(rt.daemon_pids())]
            t0 = time.perf_counter()
            make = partial(start_pod, rt, images.busybox, BUSYBOX_SLEEP)
            starts = [retrying(rt, "pod start", make) for _ in range(pods)]
            made = await bounded(concurrency, starts)
            res.setdefault("up", []).append(pods / (time.perf_counter() - t0))
            cpu = [host_cpu_seconds() - cpu[0], process_cpu_seconds(rt.daemon_pids()) - cpu[1]]
            if r == rounds - 1:  # memory with the pods running, on the last round
                await asyncio.sleep(SETTLE)
                daemons, monitors = rt.daemon_pids(), rt.monitor_pids()
                for key, pids in (("daemon", daemons), ("monitors", monitors), ("sum", daemons + monitors)):
                    rss, pss = memory_kb(pids)
                    res[f"{key}_rss"], res[f"{key}_pss"] = [rss / 1024], [pss / 1024]
                res["n_monitors"] = [float(len(monitors))]
            cpu0 = [host_cpu_seconds(), process_cpu_seconds(rt.daemon_pids())]
            t0 = time.perf_counter()
            await bounded(concurrency, [remove_pod(rt, p) for p in made])
            res.setdefault("down", []).append(pods / (time.perf_counter() - t0))
            cpu[0] += host_cpu_seconds() - cpu0[0]
            cpu[1] += process_cpu_seconds(rt.daemon_pids()) - cpu0[1]
            res.setdefault("host_cpu", []).append(cpu[0] / pods)
            res.setdefault("daemon_cpu", []).append(cpu[1] / pods)
            log(f"  concurrent round {r + 1}/{rounds}: {rt.name} up {res['up'][-1]:.2f} pods/s, "
                f"down {res['down'][-1]:.2f} pods/s")
    return out


async def phase_list(
    runtimes: list[Runtime], images: Images, containers: int, concurrency: int, runs: int
) -> Results:
    out: Results = {rt.name: {} for rt in runtimes}
    n_pods = 10
    for rt in runtimes:
        cfgs = [pod_config(rt) for _ in range(n_pods)]
        t0 = time.perf_counter()
        ids = await bounded(concurrency, [run_pod(rt, c) for c in cfgs])
        jobs = []
        for i in range(containers):
            cfg = container_config(images.busybox, BUSYBOX_SLEEP, f"c{i}")
            make = partial(create_container, rt, ids[i % n_pods], cfgs[i % n_pods], cfg)
            jobs.append(retrying(rt, "CreateContainer", make))
        await bounded(concurrency, jobs)
        out[rt.name]["create_rate"] = [containers / (time.perf_counter() - t0)]
        log(f"  list: {rt.name} made {containers} containers in {n_pods} pods "
            f"({out[rt.name]['create_rate'][0]:.1f}/s)")
    for i in range(runs + 2):
        for rt in order(runtimes, i):
            t0 = time.perf_counter()
            resp = await rt.rt.ListContainers(pb.ListContainersRequest(), timeout=60)
            t = time.perf_counter() - t0
            if len(resp.containers) < containers:
                raise RuntimeError(f"{rt.name}: ListContainers gave {len(resp.containers)} containers")
            if i >= 2:
                out[rt.name].setdefault("list", []).append(t)
    for rt in runtimes:
        t0 = time.perf_counter()
        if await remove_all(rt):
            log(f"  list: {rt.name} removed its pods in {time.perf_counter() - t0:.1f} s")
    return out


# -- main ---------------------------------------------------------------------------------------------------


def report(runtimes: list[Runtime], res: dict[str, Results],
           idle: dict[str, tuple[int, int]], args: argparse.Namespace) -> None:
    names = [rt.name for rt in runtimes]

    Stat = Callable[[list[float]], float]

    def val(phase: str, key: str, rt: str, f: Stat = median, scale: float = 1.0) -> float:
        xs = res.get(phase, {}).get(rt, {}).get(key)
        return f(xs) * scale if xs else math.nan

    def row(label: str, phase: str, key: str, unit: str, target: str = "",
            f: Callable[[list[float]], float] = median, scale: float = 1.0) -> Row:
        p, c = (val(phase, key, n, f, scale) if n in names else math.nan for n in ("pycrio", "containerd"))
        return Row(label, p, c, unit, target)

    p90: Callable[[list[float]], float] = lambda xs: percentile(xs, 90)  # noqa: E731
    rows = [
        row(f"start p50 (pod+container, {args.runs} runs)", "start", "start", "ms", "<= 0.8", scale=1000),
        row("start p90", "start", "start", "ms", f=p90, scale=1000),
        row("  RunPodSandbox p50", "start", "run", "ms", scale=1000),
        row("  CreateContainer p50", "start", "create", "ms", scale=1000),
        row("  StartContainer p50", "start", "startc", "ms", scale=1000),
        row("stop + remove p50", "start", "stop", "ms", scale=1000),
        row("stop + remove p90", "start", "stop", "ms", f=p90, scale=1000),
        row(f"ExecSync echo p50 ({args.exec_runs} runs)", "exec", "exec", "ms", "<= 1.0", scale=1000),
        row("ExecSync echo p90", "exec", "exec", "ms", f=p90, scale=1000),
        row(f"start, {args.pods} pods x{args.concurrency} concurrent", "concurrent", "up", "pod/s",
            ">= 1.25"),
        row(f"stop+remove, {args.pods} pods x{args.concurrency}", "concurrent", "down", "pod/s"),
        row("  host CPU per pod (start+stop)", "concurrent", "host_cpu", "ms", scale=1000),
        row("  daemon CPU per pod (start+stop)", "concurrent", "daemon_cpu", "ms", scale=1000),
        row(f"ListContainers, {args.containers} ctrs p50", "list", "list", "ms", scale=1000),
        row(f"  CreateContainer x{args.concurrency} (setup)", "list", "create_rate", "ctr/s"),
    ]
    for n in names:
        res.setdefault("idle", {})[n] = {"rss": [idle[n][0] / 1024], "pss": [idle[n][1] / 1024]}
    rows += [
        row("daemon RSS idle", "idle", "rss", "MB"),
        row("daemon PSS idle", "idle", "pss", "MB"),
        row(f"daemon RSS, {args.pods} pods", "concurrent", "daemon_rss", "MB"),
        row(f"daemon PSS, {args.pods} pods", "concurrent", "daemon_pss", "MB"),
        row(f"monitors PSS, {args.pods} pods", "concurrent", "monitors_pss", "MB"),
        row("  monitor processes", "concurrent", "n_monitors", ""),
        row(f"daemon+monitors RSS, {args.pods} pods", "concurrent", "sum_rss", "MB"),
        row(f"daemon+monitors PSS, {args.pods} pods", "concurrent", "sum_pss", "MB", "<= 0.8"),
        row(f"start p50, CNI phase ({args.cni_runs} runs)", "cni", "start", "ms", scale=1000),
        row("  of which CNI ADD p50", "cni", "add", "ms", scale=1000),
        row("  runtime time between ADD calls", "cni", "add_gaps", "ms", scale=1000),
        row("stop + remove p50, CNI phase", "cni", "stop", "ms", scale=1000),
        row("  of which CNI DEL p50", "cni", "del", "ms", scale=1000),
        row("  plugin calls per pod", "cni", "calls", ""),
        row("start p50, hostNetwork pods", "cni", "hoststart", "ms", scale=1000),
        row("stop + remove p50, hostNetwork", "cni", "hoststop", "ms", scale=1000),
    ]
    rows = [r for r in rows if not (math.isnan(r.pycrio) and math.isnan(r.containerd))]
    print_table("pod lifecycle: pycrio vs containerd (ratio = pycrio / containerd)", rows)
    cni = res.get("cni", {})
    for n in names:
        if cni.get(n, {}).get("add"):
            share_add = median(a / s for a, s in zip(cni[n]["add"], cni[n]["start"], strict=True))
            share_del = median(d / s for d, s in zip(cni[n]["del"], cni[n]["stop"], strict=True))
            log(f"{n}: CNI ADD is {share_add:.0%} of pod start, CNI DEL {share_del:.0%} of stop + remove "
                f"(medians of per-pod shares; plugins wrapped by timestamping bash scripts)")


async def measure(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="pycrio-bench-", dir="/tmp"))
    names = ["pycrio"] + (["containerd"] if not args.no_containerd and ctrd.installed() else [])
    images: Images | None = None
    runtimes: list[Runtime] = []
    try:
        log(f"setting up in {base}: registry, images, {' and '.join(names)} ...")
        images = await asyncio.to_thread(setup_images, base)
        runtimes = make_runtimes(base, images, names)
        for rt in runtimes:
            await rt.start()
            await rt.pull(images.busybox)
        # warm-up: one pod each, so first-use costs are not measured
        for rt in runtimes:
            await remove_pod(rt, await start_pod(rt, images.busybox, BUSYBOX_SLEEP))
        await asyncio.sleep(SETTLE)
        idle = {rt.name: memory_kb(rt.daemon_pids()) for rt in runtimes}
        res: dict[str, Results] = {}
        conc = args.concurrency
        jobs: dict[str, Callable[[], Awaitable[Results]]] = {
            "start": lambda: phase_start(runtimes, images, args.runs),
            "exec": lambda: phase_exec(runtimes, images, args.exec_runs),
            "cni": lambda: phase_cni(runtimes, images, args.cni_runs),
            "concurrent": lambda: phase_concurrent(runtimes, images, args.pods, conc, args.rounds),
            "list": lambda: phase_list(runtimes, images, args.containers, conc, args.list_runs),
        }
        for phase in args.phases.split(","):
            log(f"phase {phase} ...")
            try:
                res[phase] = await jobs[phase]()
            except Exception as e:  # report what the other phases measured
                FAILURES.append(f"phase {phase}: {describe(e)}")
                log(f"  phase {phase} failed: {describe(e)}")
                for rt in runtimes:
                    await remove_all(rt)
        report(runtimes, res, idle, args)
        for failure in FAILURES:
            log(f"FAILED: {failure}")
        return 1 if FAILURES else 0
    finally:
        log("cleaning up ...")
        await bench_context_close(runtimes, images, base, args.keep_logs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20, help="sequential pod starts per runtime")
    parser.add_argument("--exec-runs", type=int, default=30)
    parser.add_argument("--cni-runs", type=int, default=10)
    parser.add_argument("--pods", type=int, default=20, help="pods in the concurrent phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the concurrent phase")
    parser.add_argument("--containers", type=int, default=500, help="containers for ListContainers")
    parser.add_argument("--list-runs", type=int, default=20)
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)}")
    parser.add_argument("--no-containerd", action="store_true", help="only pycrio")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the daemons' logs here at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/lifecycle.py must run as root", file=sys.stderr)
        return 2
    return run_main(lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
