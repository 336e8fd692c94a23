#!/usr/bin/env python3
"""Streaming benchmark: exec round trip and port-forward throughput, pycrio against containerd.

Both runtimes run at once (own sockets, roots, CNI networks) with one pod each
running busybox ``httpd`` on port 80 (the ``web`` test image). The same client code,
pycrio's own (``pycrio/streaming/client.py``, SPDY/3.1), talks to both streaming servers:

- exec: the Exec RPC for ``echo hi`` and the whole SPDY session on the URL it returns
  (``run_command``: upgrade, streams, output, exit status), ``--exec-runs`` times,
  runtimes alternating; p50/p90 of the total, and of the two halves;
- port-forward: the PortForward RPC, a SPDY port-forward session to port 80, and an
  HTTP GET of a ``--mb`` MB file the pod serves; the clock stops when the last body
  byte arrives (not at the stream's close, which containerd delays by up to a second),
  ``--pf-runs`` times; MB/s of the body. For reference, the same GET straight to the
  pod IP from the host (no runtime in the path) is timed too.

Only the ratios count (noisy machines). Run as root from the repo root:
``.venv/bin/python bench/streaming.py``. Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import containerd as ctrd
from bench.common import (
    Images,
    Pod,
    Row,
    Runtime,
    bench_context_close,
    log,
    make_runtimes,
    median,
    percentile,
    print_table,
    remove_pod,
    run_main,
    setup_images,
    start_pod,
)
from bench.host import process_cpu_seconds
from pycrio.api import api_pb2 as pb
from pycrio.streaming.client import SpdyPortForward, run_command

WEB_CMD: list[str] = []  # the web image's own CMD: busybox httpd -f -p 80 -h /var/www
BIG_FILE = "/var/www/big"
HTTP_PORT = 80
READ_SIZE = 1 << 20
TRANSFER_TIMEOUT = 300.0

Results = dict[str, dict[str, list[float]]]


def order(runtimes: list[Runtime], i: int) -> list[Runtime]:
    return runtimes if i % 2 == 0 else runtimes[::-1]


async def phase_exec(runtimes: list[Runtime], pods: dict[str, Pod], runs: int) -> Results:
    out: Results = {rt.name: {} for rt in runtimes}
    for i in range(runs + 2):
        for rt in order(runtimes, i):
            req = pb.ExecRequest(container_id=pods[rt.name].container_id, cmd=["echo", "hi"],
                                 stdout=True, stderr=True)
            t0 = time.perf_counter()
            url = (await rt.rt.Exec(req, timeout=30)).url
            t1 = time.perf_counter()
            res = await asyncio.wait_for(run_command(url), 30)
            t2 = time.perf_counter()
            if res.exit_code != 0 or res.stdout != b"hi\n":
                raise RuntimeError(f"{rt.name}: exec gave {res.exit_code} {res.stdout!r} {res.stderr!r}")
            if i >= 2:  # two warm-up rounds
                for key, val in (("total", t2 - t0), ("rpc", t1 - t0), ("stream", t2 - t1)):
                    out[rt.name].setdefault(key, []).append(val)
    return out


def parse_head(buf: bytes) -> tuple[int, int] | None:
    """(header length, Content-Length) once ``buf`` holds the whole response head."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1")
    status = head.split("\r\n", 1)[0]
    if " 200 " not in status + " ":
        raise RuntimeError(f"HTTP answer: {status!r}")
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return end + 4, int(value.strip())
    raise RuntimeError("HTTP answer without Content-Length")


async def get_through_portforward(rt: Runtime, pod: Pod) -> tuple[int, float]:
    """Body bytes and seconds: PortForward RPC + SPDY session + GET of the big file."""
    t0 = time.perf_counter()
    url = (await rt.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod.id, port=[HTTP_PORT]),
                                   timeout=30)).url
    pf = await SpdyPortForward.connect(url)
    try:
        stream = await pf.open(HTTP_PORT)
        await stream.write(f"GET /{Path(BIG_FILE).name} HTTP/1.0\r\nHost: pod\r\n\r\n".encode())
        # no half-close: containerd ends the forwarding as soon as one direction ends
        buf = b""
        got = 0
        want: int | None = None
        while want is None or got < want:
            chunk = await stream.read(READ_SIZE)
            if not chunk:
                raise RuntimeError(f"{rt.name}: stream ended after {got} of {want} body bytes "
                                   f"(error stream: {await stream.error()!r})")
            if want is None:
                buf += chunk
                head = parse_head(buf)
                if head is not None:
                    got, want = len(buf) - head[0], head[1]
                    buf = b""
            else:
                got += len(chunk)
        elapsed = time.perf_counter() - t0
        stream.reset()
        return got, elapsed
    finally:
        await pf.close()


async def get_direct(ip: str) -> tuple[int, float]:
    """The same GET straight to the pod IP from the host (no runtime in the path)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(ip, HTTP_PORT, limit=READ_SIZE)
    try:
        writer.write(f"GET /{Path(BIG_FILE).name} HTTP/1.0\r\nHost: pod\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        parsed = parse_head(head)
        assert parsed is not None
        want, got = parsed[1], 0
        while got < want:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                raise RuntimeError(f"direct GET ended after {got} of {want} bytes")
            got += len(chunk)
        return got, time.perf_counter() - t0
    finally:
        writer.close()


async def phase_portforward(runtimes: list[Runtime], pods: dict[str, Pod], runs: int, mb: int) -> Results:
    out: Results = {rt.name: {} for rt in runtimes}
    ips: dict[str, str] = {}
    for rt in runtimes:
        pod = pods[rt.name]
        script = f"head -c {mb * 1024 * 1024} /dev/urandom > {BIG_FILE}"
        req = pb.ExecSyncRequest(container_id=pod.container_id, cmd=["sh", "-c", script], timeout=120)
        resp = await rt.rt.ExecSync(req, timeout=180)
        if resp.exit_code != 0:
            raise RuntimeError(f"{rt.name}: making {BIG_FILE} failed: {resp.stderr!r}")
        st = await rt.rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id), timeout=30)
        ips[rt.name] = st.status.network.ip
    for i in range(runs + 1):
        for rt in order(runtimes, i):
            cpu0, daemon0 = time.process_time(), process_cpu_seconds(rt.daemon_pids())
            n, t = await asyncio.wait_for(get_through_portforward(rt, pods[rt.name]), TRANSFER_TIMEOUT)
            cpu, daemon = time.process_time() - cpu0, process_cpu_seconds(rt.daemon_pids()) - daemon0
            dn, dt = await asyncio.wait_for(get_direct(ips[rt.name]), TRANSFER_TIMEOUT)
            if i >= 1:  # one warm-up round
                out[rt.name].setdefault("pf", []).append(n / 1e6 / t)
                out[rt.name].setdefault("direct", []).append(dn / 1e6 / dt)
                out[rt.name].setdefault("client_cpu", []).append(cpu / t * 100)
                out[rt.name].setdefault("daemon_cpu", []).append(daemon / t * 100)
            log(f"  port-forward run {i + 1}/{runs + 1}: {rt.name} {n / 1e6 / t:.0f} MB/s "
                f"(direct {dn / 1e6 / dt:.0f} MB/s)")
    return out


def report(runtimes: list[Runtime], res: dict[str, Results], args: argparse.Namespace) -> None:
    names = [rt.name for rt in runtimes]

    def row(label: str, phase: str, key: str, unit: str, target: str = "", q: float = 50,
            scale: float = 1.0) -> Row:
        def val(name: str) -> float:
            xs = res.get(phase, {}).get(name, {}).get(key) if name in names else None
            return (median(xs) if q == 50 else percentile(xs, q)) * scale if xs else math.nan

        return Row(label, val("pycrio"), val("containerd"), unit, target)

    rows = [
        row(f"exec echo hi p50 ({args.exec_runs} runs)", "exec", "total", "ms", "<= 1.0", scale=1000),
        row("exec echo hi p90", "exec", "total", "ms", q=90, scale=1000),
        row("  Exec RPC p50", "exec", "rpc", "ms", scale=1000),
        row("  SPDY session p50", "exec", "stream", "ms", scale=1000),
        row(f"port-forward {args.mb} MB, median", "pf", "pf", "MB/s", ">= 0.8"),
        row("  runtime daemon CPU during it", "pf", "daemon_cpu", "%"),
        row("  benchmark client CPU during it", "pf", "client_cpu", "%"),
        row("  direct GET to pod IP", "pf", "direct", "MB/s"),
    ]
    rows = [r for r in rows if not (math.isnan(r.pycrio) and math.isnan(r.containerd))]
    print_table("streaming: pycrio vs containerd (ratio = pycrio / containerd)", rows)
    print("(exec: lower is better, port-forward: higher is better; same client for both)")


async def measure(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="pycrio-bench-", dir="/tmp"))
    names = ["pycrio"] + (["containerd"] if not args.no_containerd and ctrd.installed() else [])
    images: Images | None = None
    runtimes: list[Runtime] = []
    try:
        log(f"setting up in {base}: registry, images, {' and '.join(names)} ...")
        images = await asyncio.to_thread(setup_images, base)
        runtimes = make_runtimes(base, images, names)
        pods: dict[str, Pod] = {}
        for rt in runtimes:
            await rt.start()
            await rt.pull(images.web)
            pods[rt.name] = await start_pod(rt, images.web, WEB_CMD)
        res: dict[str, Results] = {}
        log("phase exec ...")
        res["exec"] = await phase_exec(runtimes, pods, args.exec_runs)
        log("phase port-forward ...")
        res["pf"] = await phase_portforward(runtimes, pods, args.pf_runs, args.mb)
        for rt in runtimes:
            await remove_pod(rt, pods.pop(rt.name))
        report(runtimes, res, args)
        return 0
    finally:
        log("cleaning up ...")
        await bench_context_close(runtimes, images, base)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--exec-runs", type=int, default=30)
    parser.add_argument("--pf-runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="size of the port-forwarded file")
    parser.add_argument("--no-containerd", action="store_true", help="only pycrio")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/streaming.py must run as root", file=sys.stderr)
        return 2
    return run_main(lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
