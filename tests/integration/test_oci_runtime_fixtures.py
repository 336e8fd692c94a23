"""Fixtures for the OCIRuntime integration tests: a busybox rootfs, bundles, cleanup.

Real conmon 2.1.6 and runc 1.1.5. Every container gets a unique 64-hex id, a
cgroup under a per-test parent, and is removed in the fixture's teardown
whatever the test did: runtime delete, runc delete -f, conmon killed by pid,
cgroups removed in every hierarchy, run directory deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycrio import reaper
from pycrio.oci import cgroups, procs
from pycrio.oci.runtime import CreateResult, OCIRuntime, RuntimeHandlerSpec

RUNC = "/usr/sbin/runc"
CONMON = "/usr/bin/conmon"
BUSYBOX = "/bin/busybox"

CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_KILL",
]

needs_host = pytest.mark.skipif(
    os.geteuid() != 0 or not all(os.path.exists(p) for p in (RUNC, CONMON, BUSYBOX)),
    reason="needs root, runc, conmon and busybox-static",
)


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/bin/busybox plus a symlink per applet; shared read-only by all containers."""
    root = tmp_path_factory.mktemp("bbroot") / "rootfs"
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")

    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, check=True, text=True).stdout.split()
    for a in applets:
        if a != "busybox":
            (root / "bin" / a).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return root


def process_spec(args: list[str], tty: bool = False) -> dict[str, Any]:
    return {
        "terminal": tty,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "HOME=/", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: list(CAPS) for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    }


def config(
    rootfs: Path,
    args: list[str],
    cgroups_path: str,
    *,
    tty: bool = False,
    memory_limit: int | None = None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if memory_limit is not None:
        resources["memory"] = {"limit": memory_limit, "swap": memory_limit}
    return {
        "ociVersion": "1.0.2",
        "process": process_spec(args, tty),
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "pycrio-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


class Env:
    """One test's runtime, handler, cgroup parent and containers."""

    def __init__(self, base: Path, rootfs: Path) -> None:
        self.base = base
        self.rootfs = rootfs
        self.handler = RuntimeHandlerSpec("runc", RUNC, str(base / "runc"))
        self.cgroup_parent = f"pycrio-test-{secrets.token_hex(6)}"
        self.runtime = OCIRuntime(CONMON, base / "run", log_level="info")
        self.ids: list[str] = []
        self.bundles = base / "b"
        self.logs = base / "logs"
        self.bundles.mkdir()
        self.logs.mkdir()

    def new_id(self) -> str:
        cid = secrets.token_hex(32)
        self.ids.append(cid)
        return cid

    def cgroup_rel(self, cid: str) -> str:
        return cgroups.container_cgroup("cgroupfs", self.cgroup_parent, cid)[1]

    def bundle(self, cid: str, args: list[str], **kw: Any) -> Path:
        b = self.bundles / cid[:12]
        b.mkdir(exist_ok=True)
        spec_path = cgroups.container_cgroup("cgroupfs", self.cgroup_parent, cid)[0]
        (b / "config.json").write_text(json.dumps(config(self.rootfs, args, spec_path, **kw)))
        return b

    def log_path(self, cid: str) -> Path:
        return self.logs / f"{cid[:12]}.log"

    async def create(
        self, args: list[str], *, tty: bool = False, stdin: bool = False, stdin_once: bool = False,
        memory_limit: int | None = None, cid: str | None = None,
    ) -> tuple[str, CreateResult]:
        cid = cid or self.new_id()
        bundle = self.bundle(cid, args, tty=tty, memory_limit=memory_limit)
        res = await self.runtime.create(
            cid, self.handler, bundle, str(self.log_path(cid)), tty=tty, stdin=stdin,
            stdin_once=stdin_once, cgroup_parent=self.cgroup_parent, timeout=30,
        )
        return cid, res

    async def run(self, args: list[str], **kw: Any) -> tuple[str, CreateResult]:
        cid, res = await self.create(args, **kw)
        await self.runtime.start(cid, self.handler)
        return cid, res

    async def cleanup(self) -> None:
        layout = cgroups.detect()
        for cid in self.ids:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.runtime.delete(cid, self.handler), 20)
            proc = await asyncio.create_subprocess_exec(
                RUNC, "--root", self.handler.root, "delete", "--force", cid,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
            for pid in conmon_pids(cid):
                procs.kill(pid, signal.SIGKILL)
                await procs.wait_exit(pid, None, 5)
            cgroups.remove(layout, self.cgroup_rel(cid))
            cgroups.remove(layout, f"/{self.cgroup_parent}/{cgroups.CONMON_PREFIX}-{cid}")
        cgroups.remove(layout, f"/{self.cgroup_parent}")
        await self.runtime.shutdown()


def conmon_pids(cid: str) -> list[int]:
    """Live conmon processes whose command line names ``cid``."""
    out = []
    for pid in procs.all_pids():
        argv = procs.cmdline(pid)
        if argv and os.path.basename(argv[0]) == "conmon" and cid in argv and procs.alive(pid):
            out.append(pid)
    return out


def leftover_cgroup_dirs(layout: cgroups.Layout, rel: str) -> list[Path]:
    return [m / rel.strip("/") for m in layout.hierarchies() if (m / rel.strip("/")).exists()]


@pytest.fixture
async def subreaper() -> AsyncIterator[reaper.ReapingChildWatcher]:
    """Make the test process a child subreaper that reaps on SIGCHLD, like the daemon."""
    loop = asyncio.get_running_loop()
    previous = asyncio.get_child_watcher()
    watcher = reaper.install(loop)
    try:
        yield watcher
    finally:
        watcher._reap_all()
        watcher.close()
        asyncio.set_child_watcher(previous)
        ctypes.CDLL(None, use_errno=True).prctl(reaper.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def short_base() -> Iterator[Path]:
    """A short run directory: attach socket paths must fit in 108 bytes."""
    base = Path(tempfile.mkdtemp(prefix="pcr", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def env(
    subreaper: reaper.ReapingChildWatcher, short_base: Path, rootfs: Path
) -> AsyncIterator[Env]:
    e = Env(short_base, rootfs)
    await e.runtime.startup()
    try:
        yield e
    finally:
        await e.cleanup()
