"""A private containerd for the benchmarks: the reference pycrio is measured against.

Debian's containerd 1.6 runs on its own socket, with its root, state, config, runc
root, opt dir and network-namespace mounts all under one directory the caller owns.
The CRI plugin is configured so it can run pods on this host:

- ``restrict_oom_score_adj = true`` (root lacks CAP_SYS_RESOURCE here, so the default
  -998 for sandboxes would fail);
- ``sandbox_image`` names a pause image the caller imports with :meth:`Containerd.import_image`
  (``ctr images import`` of a docker-archive tarball; nothing is pulled from outside);
- a CNI ``bin_dir``/``conf_dir`` pair given by the caller (empty dirs when omitted);
- the benchmark registry as a plain-HTTP host (``config_path`` + ``hosts.toml``);
- the streaming server on a random 127.0.0.1 port.

The daemon is started in its own session (Ctrl-C on the terminal does not reach it)
and stopped by pid. :meth:`Containerd.close` also removes whatever a killed or
confused daemon left behind: shims by pid, runc containers under our runc root,
mounts under our directory and the shims' sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

import grpc

from pycrio.api import api_pb2, api_pb2_grpc
from tests.support.registry import Registry

CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
RUNC = "/usr/sbin/runc"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
PULL_TIMEOUT = 600.0
CRI_NAMESPACE = "k8s.io"
# What a service manager gives a daemon; both runtimes get it (their plugins search it).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DISABLED = (
    '"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",\n'
    '                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"'
)


def installed() -> bool:
    return os.path.exists(CONTAINERD) and os.path.exists(CTR)


def containerd_config(
    d: Path,
    reg: Registry | None,
    *,
    cni_bin_dir: Path | None = None,
    cni_conf_dir: Path | None = None,
    sandbox_image: str = "",
) -> Path:
    """Write ``d/config.toml`` (and the registry's hosts.toml); everything lives under ``d``."""
    certs = d / "certs.d"
    certs.mkdir(parents=True, exist_ok=True)
    if reg is not None:
        hosts = certs / reg.host
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts.toml").write_text(
            f'server = "http://{reg.host}"\n\n[host."http://{reg.host}"]\n'
            '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n'
        )
    for sub in ("cni-bin", "cni-conf", "opt", "runc"):
        (d / sub).mkdir(exist_ok=True)
    bin_dir = cni_bin_dir or d / "cni-bin"
    conf_dir = cni_conf_dir or d / "cni-conf"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    sandbox = f'  sandbox_image = "{sandbox_image}"\n' if sandbox_image else ""
    cfg = d / "config.toml"
    cfg.write_text(
        f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = [{_DISABLED}]

[grpc]
  address = "{d / 'containerd.sock'}"

[ttrpc]
  address = "{d / 'containerd.sock.ttrpc'}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[{cri}]
{sandbox}  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{d / 'runc'}"
  [{cri}.cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
  [{cri}.registry]
    config_path = "{certs}"
"""
    )
    return cfg


class Containerd:
    """A private containerd on its own socket; stopped by pid.

    ``workdir`` receives a fresh ``ctrd-*`` directory for this instance; the caller
    deletes ``workdir`` (after :meth:`close`).
    """

    def __init__(
        self,
        workdir: Path,
        reg: Registry | None,
        *,
        cni_bin_dir: Path | None = None,
        cni_conf_dir: Path | None = None,
        sandbox_image: str = "",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ctrd-", dir=workdir))
        self.config = containerd_config(
            self.dir, reg, cni_bin_dir=cni_bin_dir, cni_conf_dir=cni_conf_dir, sandbox_image=sandbox_image
        )
        self.socket = self.dir / "containerd.sock"
        self.log_file = self.dir / "containerd.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def runc_root(self) -> Path:
        """Where the shims keep runc's state (the shim appends the namespace)."""
        return self.dir / "runc" / CRI_NAMESPACE

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def start(self, *, state_on_tmpfs: bool = False) -> None:
        """Start the daemon and wait for its CRI; ``state_on_tmpfs`` puts ``state`` on a
        private tmpfs, as /run/containerd is on a real host (:meth:`close` unmounts it)."""
        if state_on_tmpfs:
            await mount_tmpfs(self.dir / "state")
        env = {**os.environ, "PATH": SYSTEM_PATH}
        with self.log_file.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                CONTAINERD, "--config", str(self.config), stdout=log, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True, env=env,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"containerd exited:\n{self.log_tail()}")
            if self.socket.exists():
                async with grpc.aio.insecure_channel(f"unix://{self.socket}") as ch:
                    stub = api_pb2_grpc.ImageServiceStub(ch)
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.ListImages(api_pb2.ListImagesRequest(), timeout=2)
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"containerd did not become ready:\n{self.log_tail()}")

    async def pull(self, ref: str) -> float:
        """PullImage through the CRI; returns the wall time in seconds."""
        async with grpc.aio.insecure_channel(f"unix://{self.socket}") as ch:
            stub = api_pb2_grpc.ImageServiceStub(ch)
            req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
            start = time.perf_counter()
            await stub.PullImage(req, timeout=PULL_TIMEOUT)
            return time.perf_counter() - start

    async def import_image(self, tarball: Path) -> None:
        """``ctr images import`` into the CRI namespace (docker-archive or OCI tarball)."""
        argv = [CTR, "--address", str(self.socket), "--namespace", CRI_NAMESPACE]
        await run_checked([*argv, "images", "import", str(tarball)], timeout=120)

    async def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL); shims and containers keep running."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)

    async def close(self) -> None:
        """Stop the daemon and remove by force what it left: shims, containers, mounts, sockets."""
        await self.stop()
        shim_sockets = self._shim_sockets()
        for pid in self.shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.runc_root.is_dir():
            for cid in os.listdir(self.runc_root):
                argv = [RUNC, "--root", str(self.runc_root), "delete", "--force", cid]
                with contextlib.suppress(RuntimeError, TimeoutError):
                    await run_checked(argv, timeout=30)
        await unmount_under(self.dir)
        for path in shim_sockets:
            with contextlib.suppress(OSError):
                path.unlink()

    def shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes serving this daemon (found by ``-address <our socket>``)."""
        want = str(self.socket)
        out = []
        for pid, argv in iter_processes():
            if argv and argv[0].endswith("containerd-shim-runc-v2") and want in argv:
                out.append(pid)
        return out

    def _shim_sockets(self) -> list[Path]:
        """The shims' ttrpc sockets (under /run/containerd/s), named in each task's ``address`` file."""
        tasks = self.dir / "state" / "io.containerd.runtime.v2.task"
        out = []
        for addr in tasks.glob("*/*/address") if tasks.is_dir() else ():
            with contextlib.suppress(OSError):
                text = addr.read_text().strip()
                if text.startswith("unix://"):
                    out.append(Path(text[len("unix://") :]))
        return out


# -- small host helpers shared with bench/common.py -------------------------------------------------


async def run_checked(argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> bytes:
    """Run a command; its stdout, or RuntimeError with its output when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        text = (err or out).decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {text}")
    return out


def iter_processes() -> list[tuple[int, list[str]]]:
    """(pid, argv) of every live process (kernel threads and zombies have no argv)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            out.append((int(name), raw.rstrip(b"\0").decode(errors="replace").split("\0")))
    return out


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest last (in mount order)."""
    prefix = str(directory).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix[:-1]:
                out.append(point)
    return out


async def mount_tmpfs(directory: Path, size: str = "2g") -> None:
    """A private tmpfs on ``directory``, as /run is for a runtime's state on a real host."""
    directory.mkdir(parents=True, exist_ok=True)
    await run_checked(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)])


async def unmount_under(directory: Path) -> None:
    """Lazily unmount everything below ``directory``, newest first (bounded passes)."""
    for _ in range(5):
        points = mounts_under(directory)
        if not points:
            return
        for point in reversed(points):
            with contextlib.suppress(RuntimeError, TimeoutError):
                await run_checked(["umount", "-l", point], timeout=30)
