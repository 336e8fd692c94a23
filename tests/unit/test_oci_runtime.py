"""OCIRuntime argument checks and create failure paths, with a scripted fake conmon.

The fake conmon is a Python script that behaves like conmon on the pipes
(reads the start pipe, writes the sync message) in the way each test asks.
Real conmon and runc are exercised in tests/integration/test_oci_runtime*.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pycrio.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, NotFound
from pycrio.oci import procs
from pycrio.oci.runtime import ContainerNotFound, OCIRuntime, OCIRuntimeError, RuntimeHandlerSpec

FAKE_CONMON = """\
import json, os, sys, time
here = os.path.dirname(os.path.abspath(sys.argv[0]))
mode = open(os.path.join(here, "mode")).read().strip()
with open(os.path.join(here, "argv.json"), "w") as f:
    json.dump(sys.argv[1:], f)
sync = int(os.environ["_OCI_SYNCPIPE"])
start = int(os.environ["_OCI_STARTPIPE"])
if mode == "badargs":
    sys.stderr.write("conmon: option parsing failed: Unknown option --bogus\\n")
    sys.exit(1)
os.read(start, 1)
if mode == "hang":
    with open(os.path.join(here, "pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
if mode == "fail":
    msg = 'time="2024" level=error msg="runc create failed: rootfs does not exist"\\n'
    os.write(sync, (json.dumps({"pid": -1, "message": msg}) + "\\n").encode())
    sys.exit(0)
if mode == "silent":
    sys.exit(0)
"""

FAKE_RUNC = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/runc.calls"
echo 'time="x" level=error msg="container does not exist"' >&2
exit 1
"""


@pytest.fixture
def fake(tmp_path: Path) -> tuple[OCIRuntime, RuntimeHandlerSpec, Path]:
    d = tmp_path / "fake"
    d.mkdir()
    conmon = d / "conmon"
    conmon.write_text(f"#!{sys.executable}\n" + FAKE_CONMON)
    conmon.chmod(0o755)
    runc = d / "runc"
    runc.write_text(FAKE_RUNC)
    runc.chmod(0o755)
    rt = OCIRuntime(str(conmon), tmp_path / "run")
    return rt, RuntimeHandlerSpec("fake", str(runc), str(tmp_path / "state")), d


def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    b.mkdir(exist_ok=True)
    (b / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    return b


CID = "a" * 64


def assert_nothing_left(rt: OCIRuntime, tmp_path: Path, log: Path) -> None:
    assert not rt.files(CID).dir.exists()
    assert not (rt.socket_dir / CID).exists()
    assert not (rt.exits_dir / CID).exists()
    assert not log.exists()
    assert rt.known_containers() == []


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("fail", OCIRuntimeError, "runc create failed: rootfs does not exist"),
        ("badargs", OCIRuntimeError, "option parsing failed"),
        ("silent", OCIRuntimeError, "exited without reporting"),
    ],
)
async def test_create_failures_leave_nothing(
    fake: tuple[OCIRuntime, RuntimeHandlerSpec, Path], tmp_path: Path, mode: str, error: type, text: str
) -> None:
    rt, h, d = fake
    (d / "mode").write_text(mode)
    log = tmp_path / "logs" / "c.log"
    log.parent.mkdir()
    with pytest.raises(error) as ei:
        await rt.create(CID, h, bundle(tmp_path), str(log), timeout=10)
    assert text in str(ei.value)
    assert_nothing_left(rt, tmp_path, log)
    # The runtime was asked to forget the container.
    assert f"delete --force {CID}" in (d / "runc.calls").read_text()
    argv = json.loads((d / "argv.json").read_text())
    assert argv[argv.index("-c") + 1] == CID


Fake = tuple[OCIRuntime, RuntimeHandlerSpec, Path]


async def test_create_timeout_kills_conmon(fake: Fake, tmp_path: Path) -> None:
    rt, h, d = fake
    (d / "mode").write_text("hang")
    log = tmp_path / "c.log"
    log.write_text("kept: it existed before\n")
    with pytest.raises(DeadlineExceeded):
        await rt.create(CID, h, bundle(tmp_path), str(log), timeout=0.5)
    pid = int((d / "pid").read_text())
    assert not procs.alive(pid)
    assert log.read_text() == "kept: it existed before\n"
    assert not rt.files(CID).dir.exists()


async def test_create_argument_checks(fake: Fake, tmp_path: Path) -> None:
    rt, h, _ = fake
    b = bundle(tmp_path)
    for bad_id in ("", "../x", "a/b", "a.b", "-x", "x" * 200):
        with pytest.raises(InvalidArgument):
            await rt.create(bad_id, h, b, str(tmp_path / "l"))
    for bad_log in ("relative.log", str(tmp_path / "a:b.log")):
        with pytest.raises(InvalidArgument):
            await rt.create(CID, h, b, bad_log)
    with pytest.raises(InvalidArgument, match=r"config\.json"):
        await rt.create(CID, h, tmp_path / "nobundle", str(tmp_path / "l"))
    with pytest.raises(InvalidArgument):
        await rt.create(CID, h, b, str(tmp_path / "l"), cgroup_manager="lxc")
    # A container the runtime already has is refused, and left alone.
    (Path(h.root) / CID).mkdir(parents=True)
    with pytest.raises(AlreadyExists):
        await rt.create(CID, h, b, str(tmp_path / "l"))
    assert (Path(h.root) / CID).is_dir()


async def test_unknown_container(fake: tuple[OCIRuntime, RuntimeHandlerSpec, Path]) -> None:
    rt, h, _ = fake
    await rt.startup()
    try:
        assert rt.read_exit(CID) is None
        assert not rt.conmon_alive(CID)
        assert rt.container_pid(CID) is None
        for call in (
            rt.reopen_log(CID),
            rt.resize(CID, 10, 10),
            rt.wait_exit(CID, 1),
            rt.exec_sync(CID, h, ["true"], 1, {}),
            rt.start(CID, h),
            rt.kill(CID, h, 15),
        ):
            with pytest.raises(NotFound):
                await call
        assert await rt.state(CID, h) is None
        await rt.delete(CID, h)  # idempotent
        await rt.delete(CID, h)
        with pytest.raises(ContainerNotFound):
            rt.connect_attach(CID)
    finally:
        await rt.shutdown()


def test_paths_and_exec_argv(fake: tuple[OCIRuntime, RuntimeHandlerSpec, Path]) -> None:
    rt, h, _ = fake
    assert rt.attach_socket_path(CID) == rt.runroot / "socks" / CID / "attach"
    assert rt.exec_argv(CID, h, "/w/p.json", tty=True) == [
        h.path, "--root", h.root, "exec", "--process", "/w/p.json", "--tty", CID,
    ]
    assert "--tty" not in rt.exec_argv(CID, h, "/w/p.json", tty=False)
    os.makedirs(rt.persist_root / CID)
    os.makedirs(rt.persist_root / "not.an.id")
    assert rt.known_containers() == [CID]
