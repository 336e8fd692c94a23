"""OCIRuntime with real conmon 2.1.6 and runc 1.1.5: lifecycle, logs, signals, exits, failures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from pycrio.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from pycrio.oci import cgroups, crilog, procs
from pycrio.oci.runtime import ContainerNotFound, OCIRuntime, OCIRuntimeError
from pycrio.stats import cgroup as cgroup_stats
from tests.integration import test_oci_runtime_fixtures as fx
from tests.integration.test_oci_runtime_fixtures import (
    CONMON,
    Env,
    conmon_pids,
    leftover_cgroup_dirs,
    needs_host,
)

pytestmark = [needs_host, pytest.mark.root]

# The shared fixtures, visible to pytest in this module.
env, rootfs, short_base, subreaper = fx.env, fx.rootfs, fx.short_base, fx.subreaper

SLEEPER = ["/bin/busybox", "sleep", "1000"]


async def test_create_start_exit_code(env: Env) -> None:
    seen: list[str] = []
    fired = asyncio.Event()

    def on_exit(cid: str) -> None:
        seen.append(cid)
        fired.set()

    env.runtime.on_exit(on_exit)
    cid, res = await env.create(["/bin/sh", "-c", "exit 3"])
    assert res.pid > 0 and res.conmon_pid > 0 and res.pid != res.conmon_pid
    st = await env.runtime.state(cid, env.handler)
    assert st is not None and st["status"] == "created" and st["pid"] == res.pid
    assert env.runtime.container_pid(cid) == res.pid
    assert env.runtime.conmon_alive(cid)
    assert env.runtime.read_exit(cid) is None
    # The container lives in the cgroup asked for, conmon in its own next to it.
    assert cgroups.pid_cgroups(res.pid)["memory"] == env.cgroup_rel(cid)
    assert cgroups.pid_cgroups(res.conmon_pid)["memory"].endswith(f"/pycrio-conmon-{cid}")
    await env.runtime.start(cid, env.handler)
    await asyncio.wait_for(fired.wait(), 10)
    assert seen == [cid]
    info = await env.runtime.wait_exit(cid, 10)
    assert info.exit_code == 3 and not info.oom_killed and info.from_conmon
    assert abs(info.finished_at_ns - __import__("time").time_ns()) < 30 * 10**9
    assert env.runtime.read_exit(cid) == info
    st = await env.runtime.state(cid, env.handler)
    assert st is not None and st["status"] == "stopped"
    assert env.runtime.container_pid(cid) is None
    # Starting a stopped container is refused, not a crash.
    with pytest.raises(FailedPrecondition):
        await env.runtime.start(cid, env.handler)


async def test_log_file_cri_format(env: Env) -> None:
    cid, _ = await env.run(["/bin/sh", "-c", "echo out; echo err >&2; printf partial"])
    info = await env.runtime.wait_exit(cid, 10)
    assert info.exit_code == 0
    records = list(crilog.iter_records(env.log_path(cid).read_bytes(), strict=True))
    out = [(r.partial, r.content) for r in records if r.stream == "stdout"]
    err = [(r.partial, r.content) for r in records if r.stream == "stderr"]
    assert out == [(False, b"out"), (True, b"partial")]
    assert err == [(False, b"err")]
    for r in records:
        assert abs(r.time_ns - info.finished_at_ns) < 10 * 10**9


async def test_kill_sigterm_and_sigkill(env: Env) -> None:
    # PID 1 of a pid namespace ignores SIGTERM unless it handles it: trap it.
    term, _ = await env.run(["/bin/sh", "-c", "trap 'exit 7' TERM; /bin/busybox sleep 1000 & wait"])
    killed, _ = await env.run(SLEEPER)
    with pytest.raises(DeadlineExceeded):
        await env.runtime.wait_exit(killed, 0.2)
    await env.runtime.kill(term, env.handler, signal.SIGTERM)
    await env.runtime.kill(killed, env.handler, signal.SIGKILL)
    assert (await env.runtime.wait_exit(term, 10)).exit_code == 7
    assert (await env.runtime.wait_exit(killed, 10)).exit_code == 137
    # Signalling a stopped container is not an error.
    await env.runtime.kill(killed, env.handler, signal.SIGKILL)
    await env.runtime.kill(killed, env.handler, signal.SIGKILL, all_processes=True)


async def test_kill_all_processes(env: Env) -> None:
    script = "trap '' TERM; /bin/busybox sleep 1000 & /bin/busybox sleep 1000"
    cid, _ = await env.run(["/bin/sh", "-c", script])
    await env.runtime.kill(cid, env.handler, signal.SIGKILL, all_processes=True)
    assert (await env.runtime.wait_exit(cid, 10)).exit_code == 137


async def test_delete_running_and_idempotent(env: Env) -> None:
    cid, res = await env.run(SLEEPER)
    files = env.runtime.files(cid)
    with pytest.raises(FailedPrecondition):
        await env.runtime.delete(cid, env.handler, force=False)
    assert env.runtime.container_pid(cid) == res.pid
    await env.runtime.delete(cid, env.handler)
    assert not procs.alive(res.pid) and not procs.alive(res.conmon_pid)
    assert await env.runtime.state(cid, env.handler) is None
    assert not files.dir.exists()
    assert not os.path.lexists(env.runtime.socket_dir / cid)  # conmon 2.1.6 leaves this symlink
    assert not (env.runtime.exits_dir / cid).exists()
    layout = cgroups.detect()
    assert leftover_cgroup_dirs(layout, env.cgroup_rel(cid)) == []
    assert leftover_cgroup_dirs(layout, f"/{env.cgroup_parent}/pycrio-conmon-{cid}") == []
    await env.runtime.delete(cid, env.handler)
    assert conmon_pids(cid) == []


async def test_delete_created_container(env: Env) -> None:
    cid, res = await env.create(SLEEPER)
    assert env.runtime.cgroup_paths(cid)["memory"] == env.cgroup_rel(cid)
    await env.runtime.delete(cid, env.handler)
    assert not procs.alive(res.pid) and not procs.alive(res.conmon_pid)
    assert await env.runtime.state(cid, env.handler) is None
    assert env.runtime.known_containers() == [] and env.runtime.cgroup_paths(cid) == {}
    assert leftover_cgroup_dirs(cgroups.detect(), env.cgroup_rel(cid)) == []


async def test_update_resources(env: Env) -> None:
    cid, _ = await env.run(SLEEPER)
    await env.runtime.update(cid, env.handler, {"memory": {"limit": 64 * 1024 * 1024}})
    st = cgroup_stats.sample(cgroup_stats.resolve(cgroups.detect(), {"": env.cgroup_rel(cid)}))
    assert st.memory_limit == 64 * 1024 * 1024
    assert st.pids_current == 1
    with pytest.raises(OCIRuntimeError):
        await env.runtime.update(cid, env.handler, {"memory": {"limit": "lots"}})


async def test_restart_sees_exit_that_nobody_watched(env: Env) -> None:
    cid, res = await env.create(["/bin/sh", "-c", "exit 5"])
    await env.runtime.shutdown()  # the "daemon" goes away; conmon does not
    await env.runtime.start(cid, env.handler)
    assert await procs.wait_exit(res.conmon_pid, None, 10)
    again = OCIRuntime(CONMON, env.runtime.runroot)
    seen: list[str] = []
    again.on_exit(seen.append)
    await again.startup()
    try:
        assert seen == [cid]
        info = again.read_exit(cid)
        assert info is not None and info.exit_code == 5
        assert (await again.wait_exit(cid, 1)).exit_code == 5
        assert not again.conmon_alive(cid)
    finally:
        await again.shutdown()
    env.runtime = again


async def test_containers_outlive_the_runtime_object(env: Env) -> None:
    cid, res = await env.run(SLEEPER)
    await env.runtime.shutdown()
    again = OCIRuntime(CONMON, env.runtime.runroot)
    await again.startup()
    env.runtime = again
    assert again.known_containers() == [cid]
    assert again.container_pid(cid) == res.pid
    assert again.conmon_alive(cid)
    st = await again.state(cid, env.handler)
    assert st is not None and st["status"] == "running"
    waiter = asyncio.ensure_future(again.wait_exit(cid, 10))
    await again.kill(cid, env.handler, signal.SIGKILL)
    assert (await waiter).exit_code == 137


async def test_conmon_killed_wait_exit_follows_container(env: Env) -> None:
    """cri-o#9406: conmon gone; the wait must end when the container does, not hang."""
    cid, res = await env.run(SLEEPER)
    procs.kill(res.conmon_pid, signal.SIGKILL)
    assert await procs.wait_exit(res.conmon_pid, None, 5)
    waiter = asyncio.ensure_future(env.runtime.wait_exit(cid, 10))
    await asyncio.sleep(0)
    assert not waiter.done()
    os.kill(res.pid, signal.SIGKILL)
    info = await waiter
    assert info.exit_code == 255 and not info.from_conmon


async def test_bad_bundle_leaves_nothing(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["/no/such/binary"])
    log = env.log_path(cid)
    with pytest.raises(OCIRuntimeError) as ei:
        await env.runtime.create(cid, env.handler, bundle, str(log), cgroup_parent=env.cgroup_parent)
    # runc's own words reach the caller.
    assert "/no/such/binary" in str(ei.value) and "no such file or directory" in str(ei.value)
    assert conmon_pids(cid) == []
    assert await env.runtime.state(cid, env.handler) is None
    assert not (Path(env.handler.root) / cid).exists()
    assert not env.runtime.files(cid).dir.exists()
    assert not os.path.lexists(env.runtime.socket_dir / cid)
    assert not (env.runtime.exits_dir / cid).exists()
    assert not log.exists()
    assert sorted(os.listdir(bundle)) == ["config.json"]
    layout = cgroups.detect()
    assert leftover_cgroup_dirs(layout, env.cgroup_rel(cid)) == []
    assert leftover_cgroup_dirs(layout, f"/{env.cgroup_parent}/pycrio-conmon-{cid}") == []


async def test_broken_config_and_missing_rootfs(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, SLEEPER)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["path"] = "/nonexistent/rootfs"
    (bundle / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OCIRuntimeError, match="rootfs"):
        await env.runtime.create(cid, env.handler, bundle, str(env.log_path(cid)))
    (bundle / "config.json").write_text("{not json")
    with pytest.raises(OCIRuntimeError):
        await env.runtime.create(cid, env.handler, bundle, str(env.log_path(cid)))
    assert conmon_pids(cid) == [] and not env.runtime.files(cid).dir.exists()


async def test_duplicate_id_keeps_the_first(env: Env) -> None:
    cid, res = await env.run(SLEEPER)
    with pytest.raises(AlreadyExists):
        await env.create(SLEEPER, cid=cid)
    assert env.runtime.container_pid(cid) == res.pid and env.runtime.conmon_alive(cid)


async def test_unknown_container_id(env: Env) -> None:
    cid = "f" * 64
    h = env.handler
    with pytest.raises(ContainerNotFound):
        await env.runtime.start(cid, h)
    with pytest.raises(ContainerNotFound):
        await env.runtime.kill(cid, h, signal.SIGTERM)
    with pytest.raises(NotFound):
        await env.runtime.update(cid, h, {})
    with pytest.raises(NotFound):
        await env.runtime.exec_sync(cid, h, ["true"], 1, {})
    with pytest.raises(NotFound):
        await env.runtime.reopen_log(cid)
    with pytest.raises(NotFound):
        await env.runtime.wait_exit(cid, 1)
    with pytest.raises(InvalidArgument):
        await env.runtime.state("../etc", h)
    assert await env.runtime.state(cid, h) is None
    assert env.runtime.read_exit(cid) is None
    await env.runtime.delete(cid, h)


async def test_crun_handler_reports_failure(env: Env) -> None:
    """crun 1.8.1 cannot run on this hybrid host: the error must be clear, not a hang."""
    crun = "/usr/bin/crun"
    if not os.path.exists(crun):
        pytest.skip("crun not installed")
    from pycrio.oci.runtime import RuntimeHandlerSpec

    h = RuntimeHandlerSpec("crun", crun, str(env.base / "crun"))
    cid = env.new_id()
    bundle = env.bundle(cid, ["/bin/sh", "-c", "exit 4"])
    try:
        await env.runtime.create(cid, h, bundle, str(env.log_path(cid)), cgroup_parent=env.cgroup_parent)
    except OCIRuntimeError as exc:
        print("crun:", exc)
        assert "create failed" in str(exc)
        assert conmon_pids(cid) == [] and not env.runtime.files(cid).dir.exists()
        return
    await env.runtime.start(cid, h)
    assert (await env.runtime.wait_exit(cid, 10)).exit_code == 4
    await env.runtime.delete(cid, h)
