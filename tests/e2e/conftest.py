"""End-to-end fixtures: a real pycrio daemon with a registry, CNI networking and pulled images.

Every environment (:class:`E2E`) gets its own root/runroot/socket under a tmp dir, its own
cgroup parent (``/pycrio-e2e-<token>``), CNI network (bridge, /24 subnet, host-local
store) and a marker in the daemon's environment, so that everything it made can be
found on the host and removed even when a test fails: pods through the daemon first,
then processes, mounts, cgroups, the bridge and iptables rules directly.

``e2e`` is one daemon per test module; tests that restart or crash the daemon build a
private one with ``make_e2e``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from pycrio.network.defaults import install_default_conflist
from tests.integration.test_cni_support import chain_names, free_subnet, iptables_state
from tests.support.daemon import PycrioDaemon
from tests.support.regclient import PushedImage
from tests.support.registry import Registry

T = TypeVar("T")

needs_host = pytest.mark.skipif(
    os.geteuid() != 0
    or not os.path.exists("/usr/sbin/runc")
    or not os.path.exists("/usr/bin/conmon")
    or not os.path.exists("/usr/lib/cni/bridge")
    or shutil.which("iptables-save") is None,
    reason="needs root, runc, conmon, the CNI plugins and iptables",
)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MARKER_ENV = "PYCRIO_E2E_MARKER"
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def grpc_code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.value.code()
    return code


def parallel(fn: Callable[..., T], *arg_lists: Any, workers: int = 4) -> list[T]:
    """Run ``fn`` over zipped argument lists in threads; results in order, first error raised."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, *arg_lists))


def wait_for(
    check: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``check`` until it returns something true (bounded); that value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or check}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- the network


class Network:
    """A private CNI network: bridge, /24, host-local store; installed into a conf dir."""

    def __init__(self, root: Path) -> None:
        token = secrets.token_hex(4)
        self.name = f"e2e{token}"
        self.bridge = f"pye{token}"
        self.subnet = free_subnet()
        self.ipam_dir = root / "ipam"
        self.pod_ids: set[str] = set()

    @property
    def prefix(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + "."

    def install(self, conf_dir: Path) -> str:
        path = install_default_conflist(
            conf_dir, name=self.name, bridge=self.bridge, subnet=self.subnet, ipam_data_dir=str(self.ipam_dir)
        )
        assert path is not None
        return path

    def ip_files(self) -> list[str]:
        d = self.ipam_dir / self.name
        if not d.is_dir():
            return []
        return sorted(n for n in os.listdir(d) if n.startswith(self.prefix))

    def veths(self) -> list[str]:
        out = subprocess.run(
            ["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True
        )
        return [ln.split(":")[1].strip().split("@")[0] for ln in out.stdout.splitlines() if ":" in ln]

    def route_localnet(self) -> list[str]:
        """``[bridge]`` while localhost routing is on for our bridge."""
        path = Path("/proc/sys/net/ipv4/conf", self.bridge, "route_localnet")
        try:
            return [self.bridge] if path.read_text().strip() == "1" else []
        except OSError:
            return []

    def iptables_lines(self) -> list[str]:
        marks = [self.prefix, self.bridge, self.name]
        for pod_id in self.pod_ids:
            marks.extend(chain_names(self.name, pod_id))
        return [ln for ln in iptables_state() if any(m in ln for m in marks)]

    def cleanup(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        ipt = ["iptables", "-w", "5", "-t"]
        for line in self.iptables_lines():
            table, _, rule = line.partition(": ")
            if rule.startswith("-A "):
                subprocess.run([*ipt, table, "-D", *shlex.split(rule[3:])], capture_output=True)
        for pod_id in self.pod_ids:
            for chain in chain_names(self.name, pod_id):
                subprocess.run([*ipt, "nat", "-F", chain], capture_output=True)
                subprocess.run([*ipt, "nat", "-X", chain], capture_output=True)
        # portmap's shared CNI-HOSTPORT-* chains stay: removing them races with other
        # runtimes' ADDs on this machine (an empty chain costs nothing).
        shutil.rmtree(self.ipam_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- the environment


class E2E:
    """A pycrio daemon plus everything needed to run pods in it and to check the host."""

    def __init__(self, base: Path, images: dict[str, PushedImage], network: bool = True) -> None:
        self.base = base
        self.images = images
        self.token = secrets.token_hex(4)
        self.cgroup_parent = f"/pycrio-e2e-{self.token}"
        self.log_dir = base / "logs"
        self.net = Network(base) if network else None
        reg_conf = base / "registries.conf"
        reg_dir = base / "registries.d"
        base.mkdir(parents=True, exist_ok=True)
        reg_dir.mkdir(exist_ok=True)
        hosts = sorted({img.registry.host for img in images.values()})
        reg_conf.write_text("".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in hosts))
        settings = {
            "cgroup_parent": self.cgroup_parent,
            "image": {"registries_conf": str(reg_conf), "registries_conf_dir": str(reg_dir)},
        }
        self.daemon = PycrioDaemon(base / "pycrio", settings, env={MARKER_ENV: self.token})
        self.daemon.write_config()
        if self.net is not None:
            self.net.install(self.daemon.cni_dir)

    # -- daemon and images ------------------------------------------------------------
    @property
    def rt(self) -> Any:
        return self.daemon.runtime

    @property
    def runroot(self) -> Path:
        return self.daemon.runroot

    def start(self, pull: bool = True) -> None:
        self.daemon.start()
        if pull:
            for image in self.images.values():
                self.daemon.image.PullImage(
                    pb.PullImageRequest(image=pb.ImageSpec(image=image.ref)), timeout=60
                )

    def ref(self, key: str = "busybox") -> str:
        return self.images[key].ref

    # -- configs ----------------------------------------------------------------------------
    def pod_config(
        self, name: str = "", *, pid: int = pb.CONTAINER, host_network: bool = False
    ) -> pb.PodSandboxConfig:
        name = name or f"pod-{secrets.token_hex(3)}"
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace="e2e", uid=secrets.token_hex(8), attempt=0),
            log_directory=str(self.log_dir / name),
        )
        ns = cfg.linux.security_context.namespace_options
        ns.pid = pid  # type: ignore[assignment]
        if host_network:
            ns.network = pb.NODE
        return cfg

    def container_config(
        self, name: str = "c", command: list[str] | None = None, image: str = "busybox", **kw: Any
    ) -> pb.ContainerConfig:
        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=self.ref(image)),
            command=command or [],
            log_path=f"{name}.log",
            **kw,
        )
        return cfg

    # -- lifecycle helpers ----------------------------------------------------------------------
    def run_pod(self, cfg: pb.PodSandboxConfig | None = None, handler: str = "") -> str:
        cfg = cfg or self.pod_config()
        pod_id: str = self.rt.RunPodSandbox(
            pb.RunPodSandboxRequest(config=cfg, runtime_handler=handler)
        ).pod_sandbox_id
        if self.net is not None:
            self.net.pod_ids.add(pod_id)
        return pod_id

    def create(self, pod_id: str, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
        req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg, sandbox_config=pod_cfg)
        cid: str = self.rt.CreateContainer(req).container_id
        return cid

    def start_ctr(self, cid: str) -> None:
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid))

    def run(self, pod_id: str, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> str:
        cid = self.create(pod_id, pod_cfg, cfg)
        self.start_ctr(cid)
        return cid

    def pod_with(
        self, cfg: pb.ContainerConfig, pod_cfg: pb.PodSandboxConfig | None = None
    ) -> tuple[str, pb.PodSandboxConfig, str]:
        """A new pod running one container: (pod id, pod config, container id)."""
        pod_cfg = pod_cfg or self.pod_config()
        pod_id = self.run_pod(pod_cfg)
        return pod_id, pod_cfg, self.run(pod_id, pod_cfg, cfg)

    def status(self, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        resp: pb.ContainerStatusResponse = self.rt.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=verbose)
        )
        return resp

    def pod_status(self, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        resp: pb.PodSandboxStatusResponse = self.rt.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        )
        return resp

    def wait_exited(self, cid: str, timeout: float = 15.0) -> pb.ContainerStatus:
        def done() -> pb.ContainerStatus | None:
            st = self.status(cid).status
            return st if st.state == pb.CONTAINER_EXITED else None

        return wait_for(done, timeout, what=f"container {cid[:12]} to exit")

    def exec(self, cid: str, cmd: list[str], timeout: int = 10) -> pb.ExecSyncResponse:
        resp: pb.ExecSyncResponse = self.rt.ExecSync(
            pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=timeout + 30
        )
        return resp

    def sh(self, cid: str, script: str, timeout: int = 10) -> str:
        """stdout of ``sh -c script`` in the container; a non-zero exit fails."""
        r = self.exec(cid, ["/bin/sh", "-c", script], timeout)
        assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
        return bytes(r.stdout).decode()

    def stop_ctr(self, cid: str, timeout: int = 0) -> None:
        self.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=120)

    def remove_pod(self, pod_id: str) -> None:
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)

    def pods(self, **flt: Any) -> list[pb.PodSandbox]:
        req = (
            pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**flt)) if flt else pb.ListPodSandboxRequest()
        )
        return list(self.rt.ListPodSandbox(req).items)

    def containers(self, **flt: Any) -> list[pb.Container]:
        req = (
            pb.ListContainersRequest(filter=pb.ContainerFilter(**flt)) if flt else pb.ListContainersRequest()
        )
        return list(self.rt.ListContainers(req).containers)

    def remove_all(self) -> None:
        for pod in self.pods():
            self.remove_pod(pod.id)

    def log_path(self, pod_cfg: pb.PodSandboxConfig, cfg: pb.ContainerConfig) -> Path:
        return Path(pod_cfg.log_directory) / cfg.log_path

    # -- what is on the host ----------------------------------------------------------------------
    def known_ids(self) -> set[str]:
        """Every 64-hex id the daemon logged (pods and containers, half-made ones included)."""
        return set(_HEX64.findall(self.daemon.log()))

    def host_state(self) -> dict[str, list[str]]:
        """What this daemon has made on the host (empty lists when nothing)."""
        rr, root = self.daemon.runroot, self.daemon.root
        if self.net is not None:
            self.net.pod_ids |= self.known_ids()
        state: dict[str, list[str]] = {
            "ns_files": sorted(str(p) for p in (rr / "ns").rglob("*") if p.is_file())
            if (rr / "ns").exists()
            else [],
            "pod_dirs": _listdir(rr / "pods"),
            "ctr_dirs": _listdir(rr / "containers"),
            "conmon_dirs": _listdir(rr / "conmon"),
            "exit_files": _listdir(rr / "exits"),
            "sockets": _listdir(rr / "socks"),
            "mounts": mounts_under(rr, root),
            "cgroups": self.cgroups(),
            "processes": [f"{pid} {cmd}" for pid, cmd in self.processes()],
        }
        if self.net is not None:
            state.update(
                veths=self.net.veths(),
                ips=self.net.ip_files(),
                iptables=self.net.iptables_lines(),
                route_localnet=self.net.route_localnet(),
            )
        return state

    def leftovers(self) -> dict[str, list[str]]:
        """Non-empty entries of :meth:`host_state`."""
        return {k: v for k, v in self.host_state().items() if v}

    def cgroups(self) -> list[str]:
        """Cgroup dirs below our parent, in every hierarchy."""
        out = []
        for hier in _hierarchies():
            top = hier / self.cgroup_parent.strip("/")
            if top.is_dir():
                out += [str(p) for p in top.rglob("*") if p.is_dir()]
        return sorted(out)

    def processes(self) -> list[tuple[int, str]]:
        """Processes of this daemon's making: marker in environ, our paths in argv, or in our cgroups."""
        me = {os.getpid(), self.daemon.proc.pid if self.daemon.proc else -1}
        found = []
        base = str(self.base)
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in me:
                continue
            try:
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                env = Path(f"/proc/{name}/environ").read_bytes()
                cg = Path(f"/proc/{name}/cgroup").read_text()
            except OSError:
                continue
            if not cmd:
                continue  # kernel thread or zombie
            ours = f"{MARKER_ENV}={self.token}".encode() in env.split(b"\0")
            if ours or base in cmd or self.cgroup_parent + "/" in cg:
                found.append((int(name), cmd.strip()))
        return found

    # -- teardown ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove everything, through the daemon first, then by force."""
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_all()
        self.daemon.stop()
        for pid, _ in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mnt in reversed(mounts_under(self.daemon.runroot, self.daemon.root, self.base)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        remove_cgroups(self.cgroup_parent)
        if self.net is not None:
            self.net.pod_ids |= self.known_ids()
            self.net.cleanup()


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def mounts_under(*dirs: Path) -> list[str]:
    prefixes = tuple(str(d).rstrip("/") + "/" for d in dirs)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefixes) or point + "/" in prefixes:
                out.append(point)
    return out


def _hierarchies() -> list[Path]:
    try:
        return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def remove_cgroups(parent: str) -> None:
    """rmdir ``parent`` and everything below it in every hierarchy (best effort)."""
    for hier in _hierarchies():
        top = hier / parent.strip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def e2e_images(
    registry: Registry, busybox_image: PushedImage, web_image: PushedImage
) -> dict[str, PushedImage]:
    return {"busybox": busybox_image, "web": web_image}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, e2e_images: dict[str, PushedImage]) -> Iterator[E2E]:
    """One running daemon (registry + CNI, images pulled) per test module."""
    env = E2E(tmp_path_factory.mktemp("e2e"), e2e_images)
    leftovers: dict[str, list[str]] = {}
    try:
        env.start()
        yield env
        # after the module: removing every pod must leave the host as it found it
        env.remove_all()
        leftovers = env.leftovers()
    finally:
        env.close()
    assert not leftovers, f"left on the host after removing every pod: {leftovers}"


@pytest.fixture
def make_e2e(tmp_path: Path, e2e_images: dict[str, PushedImage]) -> Iterator[Callable[..., E2E]]:
    """Build private environments (not started) for tests that restart or crash the daemon."""
    made: list[E2E] = []

    def make(network: bool = True, images: dict[str, PushedImage] | None = None) -> E2E:
        env = E2E(tmp_path / f"env{len(made)}", images or e2e_images, network=network)
        made.append(env)
        return env

    try:
        yield make
    finally:
        for env in made:
            env.close()
