"""Shared pieces of the runtime benchmarks (lifecycle, streaming, stats).

- the benchmark registry with the test images (busybox, web, pause as a docker-archive);
- :class:`Runtime`: pycrio and containerd behind the same CRI gRPC stubs, each with its
  own CNI network (bridge, /24, host-local store), cgroup parent and log directory;
- the CRI requests both get (pod and container configs, start and removal of a pod);
- percentiles, the results table, and :func:`run_main`, which turns Ctrl-C/SIGTERM
  into one cancellation so every ``finally`` runs its cleanup.

Host-side helpers (networks, the CNI plugin directory, memory, cgroups) are in
bench/host.py, the private containerd in bench/containerd.py.

Runtimes, pods and containers are removed through their CRI first; whatever is left
after that (processes, mounts, cgroups, bridges, iptables rules) is removed by force.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import signal
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import tomli_w

from bench.containerd import (
    SYSTEM_PATH,
    Containerd,
    iter_processes,
    mount_tmpfs,
    run_checked,
    unmount_under,
)
from bench.host import CniNetwork, PluginDir, cgroup_pids, free_subnet, kill_pids, remove_cgroups, token
from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc
from tests.support import images as img
from tests.support.daemon import PycrioDaemon
from tests.support.oci_archive import write_docker_archive
from tests.support.regclient import push_image_sync
from tests.support.registry import Registry, start_registry

PAUSE_REF = "registry.local/pycrio-bench/pause:1"
START_TIMEOUT = 60.0
RPC_TIMEOUT = 120.0


# -- statistics and output ---------------------------------------------------------------------------


def median(xs: Iterable[float]) -> float:
    v = list(xs)
    return statistics.median(v) if v else math.nan


def percentile(xs: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    v = sorted(xs)
    if not v:
        return math.nan
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


@dataclass
class Row:
    """One line of the results table; ``target`` bounds the pycrio/containerd ratio."""

    label: str
    pycrio: float
    containerd: float
    unit: str
    target: str = ""  # e.g. "<= 0.8" or ">= 1.25"

    @property
    def ratio(self) -> float:
        if not self.containerd or math.isnan(self.containerd):
            return math.nan
        return self.pycrio / self.containerd

    def verdict(self) -> str:
        if not self.target or math.isnan(self.ratio):
            return ""
        op, bound = self.target.split()
        ok = self.ratio <= float(bound) if op == "<=" else self.ratio >= float(bound)
        return "ok" if ok else "MISS"


def print_table(title: str, rows: list[Row]) -> None:
    def num(x: float) -> str:
        return "-" if math.isnan(x) else (f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}")

    width = max(len(r.label) for r in rows) + 2
    print(f"\n{title}")
    head = f"{'':{width}s}{'pycrio':>10s} {'containerd':>11s} {'unit':<6s}{'ratio':>7s}  {'target':<9s}"
    print(head)
    print("-" * len(head) + "-----")
    for r in rows:
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        target = f"{r.target}x" if r.target else ""
        print(f"{r.label:{width}s}{num(r.pycrio):>10s} {num(r.containerd):>11s} {r.unit:<6s}{ratio:>7s}  "
              f"{target:<9s} {r.verdict()}")
    sys.stdout.flush()


def log(msg: str) -> None:
    print(msg, flush=True)


# -- Ctrl-C -------------------------------------------------------------------------------------------


def run_main(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main``; the first SIGINT/SIGTERM cancels it (its ``finally`` blocks clean up),
    later ones are ignored until the cleanup is done."""

    async def wrapper() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopping = False

        def on_signal() -> None:
            nonlocal stopping
            if stopping:
                log("still cleaning up, please wait ...")
                return
            stopping = True
            log("\ninterrupted: cleaning up ...")
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main()
        except asyncio.CancelledError:
            if stopping:
                return 130
            raise

    return asyncio.run(wrapper())


# -- images -------------------------------------------------------------------------------------------


@dataclass
class Images:
    registry: Registry
    busybox: str
    web: str
    pause_tar: Path


def setup_images(base: Path) -> Images:
    """Start the registry, push busybox and web, write the pause image as a docker-archive."""
    reg = start_registry(base / "registry", "plain")
    try:
        push_image_sync(reg, "bench/busybox", "latest", img.busybox_image())
        push_image_sync(reg, "bench/web", "latest", img.web_image())
        pause_tar = write_docker_archive(base / "pause.tar", {PAUSE_REF: img.pause_image()})
    except BaseException:
        reg.stop()
        raise
    return Images(reg, reg.ref("bench/busybox"), reg.ref("bench/web"), pause_tar)


# -- runtimes -----------------------------------------------------------------------------------------


class Runtime:
    """A CRI runtime under test, with its network and where its pods' cgroups and logs go."""

    def __init__(
        self, name: str, base: Path, net: CniNetwork, plugins: PluginDir, cgroup_parent: str
    ) -> None:
        self.name = name
        self.plugin_dir = plugins
        self.base = base
        self.net = net
        self.cgroup_parent = cgroup_parent
        self.channel: grpc.aio.Channel | None = None
        self._rt: api_pb2_grpc.RuntimeServiceAsyncStub | None = None
        self._images: api_pb2_grpc.ImageServiceAsyncStub | None = None
        self.pod_ids: set[str] = set()

    @property
    def rt(self) -> api_pb2_grpc.RuntimeServiceAsyncStub:
        assert self._rt is not None
        return self._rt

    @property
    def images(self) -> api_pb2_grpc.ImageServiceAsyncStub:
        assert self._images is not None
        return self._images

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    def connect(self, socket: Path) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix://{socket}")
        self._rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self._images = api_pb2_grpc.ImageServiceStub(self.channel)

    async def wait_ready(self) -> None:
        """Until Status says the runtime and the network are ready (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                st = await self.rt.Status(pb.StatusRequest(), timeout=5)
                if all(c.status for c in st.status.conditions):
                    return
            if loop.time() > deadline:
                raise RuntimeError(f"{self.name} not ready after {START_TIMEOUT}s")
            await asyncio.sleep(0.1)

    async def pull(self, ref: str) -> None:
        await self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=RPC_TIMEOUT)

    async def remove_all_pods(self) -> None:
        resp = await self.rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT)
        ids = {p.id for p in resp.items} | self.pod_ids
        sem = asyncio.Semaphore(4)

        async def one(pod_id: str) -> None:
            async with sem:
                await self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=600)
                await self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=600)

        await asyncio.gather(*(one(i) for i in ids))
        self.pod_ids.clear()

    def log_files(self) -> list[Path]:
        raise NotImplementedError

    # what each runtime runs, for the memory rows
    def daemon_pids(self) -> list[int]:
        raise NotImplementedError

    def monitor_pids(self) -> list[int]:
        raise NotImplementedError

    async def start(self) -> None:
        raise NotImplementedError

    async def _stop_daemon(self) -> None:
        raise NotImplementedError

    async def _force_cleanup(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Remove every pod through the CRI, stop the daemon, then remove leftovers by force."""
        if self.channel is not None and self.daemon_pids():
            try:
                await asyncio.wait_for(self.remove_all_pods(), 300)
            except Exception as e:
                log(f"{self.name}: removing pods through the CRI failed ({e}); removing them by force")
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        await self._stop_daemon()
        kill_pids(cgroup_pids(self.cgroup_parent))
        await self._force_cleanup()
        remove_cgroups(self.cgroup_parent)
        await self.net.cleanup()


class PycrioRuntime(Runtime):
    """pycrio's daemon (``python -m pycrio.cli.daemon``) with its own root, runroot and socket."""

    def __init__(self, base: Path, net: CniNetwork, plugins: PluginDir, images: Images, tok: str) -> None:
        super().__init__("pycrio", base, net, plugins, f"/pycbench-{tok}-p")
        reg_conf = base / "registries.conf"
        base.mkdir(parents=True, exist_ok=True)
        (base / "registries.d").mkdir(exist_ok=True)
        reg_conf.write_text(f'[[registry]]\nlocation = "{images.registry.host}"\ninsecure = true\n')
        settings = {
            "log_level": "info",
            "cgroup_parent": self.cgroup_parent,
            "image": {"registries_conf": str(reg_conf), "registries_conf_dir": str(base / "registries.d")},
            "cni": {"conf_dir": str(net.conf_dir), "plugin_dirs": [str(plugins.path)]},
        }
        self.daemon = PycrioDaemon(base / "d", settings)
        net.install([str(plugins.path)])
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        d = self.daemon
        d.base.mkdir(parents=True, exist_ok=True)
        await mount_tmpfs(d.runroot)  # runroot is /run/pycrio, a tmpfs, on a real host
        d.config_dir.mkdir(exist_ok=True)
        d.config_file.write_text(tomli_w.dumps(d.settings))
        with d.log_file.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *d.command(), stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PATH": SYSTEM_PATH},
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not d.socket.exists():
            if self.proc.returncode is not None or loop.time() > deadline:
                raise RuntimeError(f"pycrio did not start:\n{d.log()[-3000:]}")
            await asyncio.sleep(0.05)
        self.connect(d.socket)
        await self.wait_ready()

    def daemon_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.returncode is None else []

    def log_files(self) -> list[Path]:
        return [self.daemon.log_file]

    def monitor_pids(self) -> list[int]:
        mark = str(self.daemon.base)
        return [pid for pid, argv in iter_processes() if argv[0].endswith("conmon") and mark in "".join(argv)]

    async def _stop_daemon(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _force_cleanup(self) -> None:
        kill_pids(self.monitor_pids())
        runc_root = self.daemon.runroot / "runtimes" / "runc"
        if runc_root.is_dir():
            for cid in os.listdir(runc_root):
                with contextlib.suppress(RuntimeError):
                    await run_checked(["/usr/sbin/runc", "--root", str(runc_root), "delete", "--force", cid])
        await unmount_under(self.base)


class ContainerdRuntime(Runtime):
    """Debian's containerd (see bench/containerd.py) with the CRI plugin set up like pycrio."""

    def __init__(self, base: Path, net: CniNetwork, plugins: PluginDir, images: Images, tok: str) -> None:
        super().__init__("containerd", base, net, plugins, f"/pycbench-{tok}-c")
        base.mkdir(parents=True, exist_ok=True)
        net.install([str(plugins.path)])
        self.pause_tar = images.pause_tar
        self.ctrd = Containerd(base, images.registry, cni_bin_dir=plugins.path, cni_conf_dir=net.conf_dir,
                               sandbox_image=PAUSE_REF)

    async def start(self) -> None:
        await self.ctrd.start(state_on_tmpfs=True)
        await self.ctrd.import_image(self.pause_tar)
        self.connect(self.ctrd.socket)
        await self.wait_ready()

    def daemon_pids(self) -> list[int]:
        return [self.ctrd.pid] if self.ctrd.pid is not None else []

    def log_files(self) -> list[Path]:
        return [self.ctrd.log_file]

    def monitor_pids(self) -> list[int]:
        return self.ctrd.shim_pids()

    async def _stop_daemon(self) -> None:
        await self.ctrd.stop()

    async def _force_cleanup(self) -> None:
        await self.ctrd.close()
        await unmount_under(self.base)


RuntimeFactory = Callable[[Path, CniNetwork, PluginDir, Images, str], Runtime]
RUNTIMES: dict[str, RuntimeFactory] = {"pycrio": PycrioRuntime, "containerd": ContainerdRuntime}


def make_runtimes(base: Path, images: Images, names: list[str]) -> list[Runtime]:
    """pycrio and/or containerd, each with its own network (unique bridge, free /24)."""
    tok = token()
    plugins = PluginDir(base / "cni-bin")
    out: list[Runtime] = []
    taken: list[str] = []
    for name in names:
        subnet = free_subnet(taken)
        taken.append(subnet)
        net = CniNetwork(base / name, f"pcb{name[0]}net{tok}", f"pcb{tok}{name[0]}", subnet)
        out.append(RUNTIMES[name](base / name, net, plugins, images, tok))
    return out


# -- the CRI requests both runtimes get ------------------------------------------------------------------

BUSYBOX_SLEEP = ["/bin/sleep", "3600"]


def pod_config(rt: Runtime, name: str = "", *, host_network: bool = False) -> pb.PodSandboxConfig:
    name = name or f"pod-{token()}"
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=secrets.token_hex(8), attempt=0),
        hostname=name,
        log_directory=str(rt.log_dir / name),
    )
    cfg.linux.cgroup_parent = rt.cgroup_parent
    # as the kubelet sends for a pod without shareProcessNamespace: a pid namespace per container
    cfg.linux.security_context.namespace_options.pid = pb.CONTAINER
    if host_network:  # the host's UTS namespace too, so no hostname of its own (as the kubelet does)
        cfg.linux.security_context.namespace_options.network = pb.NODE
        cfg.hostname = ""
    return cfg


def container_config(image: str, command: list[str], name: str = "c") -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=command,
        log_path=f"{name}.log",
    )


@dataclass
class Pod:
    """A pod with one container, and how long each step of making it took (seconds)."""

    id: str
    config: pb.PodSandboxConfig
    container_id: str = ""
    run: float = 0.0
    create: float = 0.0
    start: float = 0.0

    @property
    def total(self) -> float:
        return self.run + self.create + self.start


async def run_pod(rt: Runtime, cfg: pb.PodSandboxConfig) -> str:
    resp = await rt.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=RPC_TIMEOUT)
    rt.pod_ids.add(resp.pod_sandbox_id)
    return str(resp.pod_sandbox_id)


async def create_container(rt: Runtime, pod_id: str, pod_cfg: pb.PodSandboxConfig,
                           cfg: pb.ContainerConfig) -> str:
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg)
    return str((await rt.rt.CreateContainer(req, timeout=RPC_TIMEOUT)).container_id)


async def start_pod(rt: Runtime, image: str, command: list[str], *, host_network: bool = False) -> Pod:
    """RunPodSandbox, CreateContainer, StartContainer, each timed."""
    loop = asyncio.get_running_loop()
    cfg = pod_config(rt, host_network=host_network)
    t0 = loop.time()
    pod = Pod(await run_pod(rt, cfg), cfg)
    t1 = loop.time()
    pod.container_id = await create_container(rt, pod.id, cfg, container_config(image, command))
    t2 = loop.time()
    await rt.rt.StartContainer(pb.StartContainerRequest(container_id=pod.container_id), timeout=RPC_TIMEOUT)
    t3 = loop.time()
    pod.run, pod.create, pod.start = t1 - t0, t2 - t1, t3 - t2
    return pod


async def remove_pod(rt: Runtime, pod: Pod) -> float:
    """StopContainer (no grace), RemoveContainer, StopPodSandbox, RemovePodSandbox; seconds taken."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    if pod.container_id:
        await rt.rt.StopContainer(pb.StopContainerRequest(container_id=pod.container_id, timeout=0),
                                  timeout=RPC_TIMEOUT)
        await rt.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=pod.container_id),
                                    timeout=RPC_TIMEOUT)
    await rt.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)
    await rt.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)
    rt.pod_ids.discard(pod.id)
    return loop.time() - t0


async def bench_context_close(
    runtimes: list[Runtime], images: Images | None, base: Path, keep_logs: Path | None = None
) -> None:
    """Close every runtime (errors reported, not raised), stop the registry, delete ``base``
    (the daemons' logs are copied to ``keep_logs`` first when given)."""
    from bench.containerd import mounts_under

    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for rt in runtimes:
            for src in rt.log_files():
                with contextlib.suppress(OSError):
                    (keep_logs / f"{rt.name}-{src.name}").write_bytes(src.read_bytes())
    for rt in runtimes:
        try:
            await rt.close()
        except Exception as e:
            log(f"cleanup of {rt.name} failed: {e!r}")
    if images is not None:
        images.registry.stop()
    if mounts_under(base):
        log(f"mounts left under {base}, not deleting it: {mounts_under(base)}")
        return
    await asyncio.to_thread(_rmtree, base)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
