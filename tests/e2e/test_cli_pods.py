"""``pycrioctl`` pod and container verbs, ``run``, ``logs`` and ``exec -s`` against a real daemon.

The module shares the e2e daemon (registry, CNI network, images pulled); every pod a
test makes is removed in a ``finally``, and the e2e fixture checks afterwards that
nothing of them is left on the host.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, needs_host, wait_for
from tests.e2e.test_cli_support import ctl, fails, ok, unique_image, write_config
from tests.support import images as img
from tests.support.regclient import push_pushed as push

pytestmark = [needs_host, pytest.mark.root]

RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"


def pod_file(e2e: E2E, tmp_path: Path, name: str = "", fmt: str = "json", **extra: Any) -> Path:
    """A crictl pod config: snake_case JSON, or camelCase YAML with enum names."""
    name = name or f"cli-{secrets.token_hex(3)}"
    if fmt == "json":
        data: dict[str, Any] = {
            "metadata": {"name": name, "namespace": "cli", "uid": secrets.token_hex(8)},
            "log_directory": str(e2e.log_dir / name),
            "linux": {"security_context": {"namespace_options": {"pid": 1}}},
        }
    else:
        data = {
            "metadata": {"name": name, "namespace": "cli"},
            "logDirectory": str(e2e.log_dir / name),
            "linux": {"securityContext": {"namespaceOptions": {"pid": "CONTAINER"}}},
        }
    data.update(extra)
    return write_config(tmp_path / f"{name}.{fmt}", data)


def ctr_file(tmp_path: Path, image: str, command: list[str], name: str = "c", **extra: Any) -> Path:
    data: dict[str, Any] = {
        "metadata": {"name": name},
        "image": {"image": image},
        "command": command,
        "log_path": f"{name}.log",
    }
    data.update(extra)
    return write_config(tmp_path / f"ctr-{name}-{secrets.token_hex(3)}.json", data)


@contextmanager
def cleanup(e2e: E2E) -> Iterator[None]:
    """Remove, even when the test fails, every pod that appeared during the block."""
    before = {p.id for p in e2e.pods()}
    try:
        yield
    finally:
        for pod in e2e.pods():
            if pod.id not in before:
                e2e.remove_pod(pod.id)


def test_info_shows_runtime_and_network_status(e2e: E2E) -> None:
    doc = json.loads(ok(e2e.daemon.socket, "info"))
    conditions = {c["type"]: c for c in doc["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is True
    assert yaml.safe_load(ok(e2e.daemon.socket, "info", "-o", "yaml"))["status"] == doc["status"]


# ---------------------------------------------------------------- pods


def test_pod_lifecycle_and_outputs(e2e: E2E, tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    with cleanup(e2e):
        cfg = pod_file(e2e, tmp_path, fmt="yaml", labels={"tier": "cli"})
        name = yaml.safe_load(cfg.read_text())["metadata"]["name"]
        pod_id = ok(sock, "runp", str(cfg)).strip()
        assert re.fullmatch(r"[0-9a-f]{64}", pod_id)
        table = ok(sock, "pods", "--name", f"^{name}$").splitlines()
        assert re.split(r"\s{3,}", table[0]) == [
            "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME",
        ]
        (row,) = table[1:]
        assert row.startswith(pod_id[:13] + " " * 7)  # truncated id in a 20-wide column
        assert re.split(r"\s{3,}", row)[2:] == ["Ready", name, "cli", "0", "runc"]
        assert ok(sock, "pods", "-q", "--label", "tier=cli").split() == [pod_id]
        assert ok(sock, "pods", "-q", "--label", "tier=other") == ""
        assert pod_id in ok(sock, "pods", "--no-trunc", "--namespace", "^cli$")
        assert ok(sock, "pods", "-q", "--state", "notready", "--name", name) == ""
        listed = json.loads(ok(sock, "pods", "-o", "json", "--id", pod_id))
        (item,) = listed["items"]
        assert item["id"] == pod_id and item["state"] == "SANDBOX_READY"
        assert item["metadata"]["name"] == name and item["labels"] == {"tier": "cli"}
        assert yaml.safe_load(ok(sock, "pods", "-o", "yaml", "--id", pod_id)) == listed
        assert ok(sock, "pods", "-q", "--latest", "--name", "^cli-") .split() == [pod_id]

        doc = json.loads(ok(sock, "inspectp", pod_id[:12]))
        status = doc["status"]
        assert status["id"] == pod_id and re.fullmatch(RFC3339, status["createdAt"])
        ip = status["network"]["ip"]
        assert e2e.net is not None and ip.startswith(e2e.net.prefix)
        assert doc["info"]["ips"] == [ip]  # the verbose info entry, decoded
        assert list(doc) == sorted(doc) and list(status) == sorted(status)
        assert list(json.loads(ok(sock, "inspectp", "-q", pod_id))) == ["status"]
        table_out = ok(sock, "inspectp", "-o", "table", pod_id)
        assert f"ID: {pod_id}\nName: {name}\n" in table_out and f"IP Addresses: {ip}\n" in table_out
        assert "Labels:\n\ttier -> cli\n" in table_out
        assert yaml.safe_load(ok(sock, "inspectp", "-o", "yaml", pod_id))["status"] == status

        assert "is running, please stop it first" in fails(sock, "rmp", pod_id)
        assert ok(sock, "stopp", pod_id) == f"Stopped sandbox {pod_id}\n"
        assert ok(sock, "pods", "-q", "--state", "notready", "--name", name).split() == [pod_id]
        assert ok(sock, "rmp", pod_id) == f"Removed sandbox {pod_id}\n"
        assert ok(sock, "pods", "-q", "--name", name) == ""


def test_pod_failures(e2e: E2E, tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    with cleanup(e2e):
        missing = tmp_path / "missing.json"
        assert f"load podSandboxConfig: config at {missing} not found" in fails(sock, "runp", str(missing))
        broken = tmp_path / "broken.yaml"
        broken.write_text("metadata: {name: x\n  - nope")
        assert "is neither JSON nor YAML" in fails(sock, "runp", str(broken))
        no_md = write_config(tmp_path / "nomd.json", {"log_directory": "/tmp"})
        assert "metadata is not set" in fails(sock, "runp", str(no_md))
        bad_type = {"metadata": {"name": "x", "namespace": "y", "attempt": "z"}}
        wrong = write_config(tmp_path / "wrong.json", bad_type)
        assert "load podSandboxConfig" in fails(sock, "runp", str(wrong))
        handler = fails(sock, "runp", "--runtime", "no-such-runtime", str(pod_file(e2e, tmp_path)))
        assert "run pod sandbox: INVALID_ARGUMENT" in handler
        unknown = "f" * 64
        assert f"NOT_FOUND: pod sandbox {unknown} not found" in fails(sock, "stopp", unknown)
        assert "NOT_FOUND" in fails(sock, "rmp", unknown)
        assert "NOT_FOUND" in fails(sock, "inspectp", unknown)
        assert "--state should be ready or notready" in fails(sock, "pods", "--state", "bogus")
        assert "invalid regular expression" in fails(sock, "pods", "--name", "(")
        assert "incorrectly specified label" in fails(sock, "pods", "--label", "novalue")
        # nothing was made by any of this
        assert e2e.pods() == [] or all(p.metadata.namespace != "cli" for p in e2e.pods())


def test_rmp_force_and_all(e2e: E2E, tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    with cleanup(e2e):
        a = ok(sock, "runp", str(pod_file(e2e, tmp_path))).strip()
        b = ok(sock, "runp", str(pod_file(e2e, tmp_path))).strip()
        assert ok(sock, "rmp", "-f", a) == f"Stopped sandbox {a}\nRemoved sandbox {a}\n"
        out = ok(sock, "rmp", "-a", "-f")
        assert f"Removed sandbox {b}" in out
        assert {p.id for p in e2e.pods()} & {a, b} == set()


# ---------------------------------------------------------------- containers


def test_container_lifecycle(e2e: E2E, tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    with cleanup(e2e):
        pod_cfg = pod_file(e2e, tmp_path)
        pod_id = ok(sock, "runp", str(pod_cfg)).strip()
        cfg = ctr_file(tmp_path, e2e.ref(), ["sleep", "600"], name="sleeper", labels={"app": "cli"})
        cid = ok(sock, "create", pod_id, str(cfg), str(pod_cfg)).strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid)
        assert cid not in ok(sock, "ps", "-q")  # ps shows running containers only
        assert ok(sock, "ps", "-a", "-q", "--pod", pod_id).split() == [cid]
        created = json.loads(ok(sock, "inspect", cid))["status"]
        assert created["state"] == "CONTAINER_CREATED" and created["startedAt"] == "0001-01-01T00:00:00Z"
        assert ok(sock, "start", cid) == f"{cid}\n"

        table = ok(sock, "ps", "--pod", pod_id).splitlines()
        assert re.split(r"\s{3,}", table[0]) == [
            "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE",
        ]
        cells = re.split(r"\s{3,}", table[1])
        assert cells[0] == cid[:13] and cells[1] == e2e.ref() and cells[3:7] == [
            "Running", "sleeper", "0", pod_id[:13],
        ]
        assert ok(sock, "ps", "-q", "--label", "app=cli", "--name", "^sleeper$").split() == [cid]
        assert ok(sock, "ps", "-q", "--image", e2e.ref(), "--pod", pod_id).split() == [cid]
        assert ok(sock, "ps", "-q", "--image", e2e.ref("web"), "--pod", pod_id) == ""
        listed = json.loads(ok(sock, "ps", "-o", "json", "--id", cid))
        (item,) = listed["containers"]
        assert item["id"] == cid and item["podSandboxId"] == pod_id and item["state"] == "CONTAINER_RUNNING"
        assert yaml.safe_load(ok(sock, "ps", "-o", "yaml", "--id", cid)) == listed

        doc = json.loads(ok(sock, "inspect", cid[:12]))
        st = doc["status"]
        assert st["id"] == cid and st["state"] == "CONTAINER_RUNNING" and st["labels"] == {"app": "cli"}
        assert re.fullmatch(RFC3339, st["startedAt"]) and st["finishedAt"] == "0001-01-01T00:00:00Z"
        assert isinstance(doc["info"]["pid"], int) and doc["info"]["pid"] > 0
        assert "resources" in st  # unset messages are shown as null, as crictl does
        table_out = ok(sock, "inspect", "-o", "table", "-q", cid)
        assert table_out.startswith(f"ID: {cid}\nName: sleeper\nState: CONTAINER_RUNNING\n")
        assert ok(sock, "inspect", "-q", "--name", "^sleeper$", "--pod", pod_id).count('"id"') >= 1

        limit = 96 * 1024 * 1024
        assert ok(sock, "update", "--memory", str(limit), cid) == f"{cid}\n"
        seen = ok(sock, "exec", "-s", cid, "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert seen.strip() == str(limit)

        assert ok(sock, "stop", "-t", "1", cid) == f"{cid}\n"
        exited = json.loads(ok(sock, "inspect", cid))["status"]
        assert exited["state"] == "CONTAINER_EXITED" and re.fullmatch(RFC3339, exited["finishedAt"])
        assert ok(sock, "ps", "-a", "-q", "--state", "exited", "--pod", pod_id).split() == [cid]
        log = Path(exited["logPath"])
        assert log.exists()
        assert ok(sock, "rm", cid) == f"{cid}\n"
        assert not log.exists()  # crictl rm removes the log file too (unless -k)
        assert ok(sock, "ps", "-a", "-q", "--pod", pod_id) == ""
        ok(sock, "rmp", "-f", pod_id)


def test_container_failures(e2e: E2E, tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    unknown = "e" * 64
    with cleanup(e2e):
        pod_cfg = pod_file(e2e, tmp_path)
        pod_id = ok(sock, "runp", str(pod_cfg)).strip()
        no_image = write_config(tmp_path / "noimage.json", {"metadata": {"name": "x"}})
        assert "image is not set" in fails(sock, "create", pod_id, str(no_image), str(pod_cfg))
        no_name = write_config(tmp_path / "noname.json", {"metadata": {}, "image": {"image": "busybox"}})
        assert "name is not in metadata" in fails(sock, "create", pod_id, str(no_name), str(pod_cfg))
        good = ctr_file(tmp_path, e2e.ref(), ["sleep", "600"], name="keep")
        err = fails(sock, "create", unknown, str(good), str(pod_cfg))
        assert "creating container: NOT_FOUND" in err
        missing = ctr_file(tmp_path, f"{e2e.images['busybox'].registry.host}/no/such:image", ["true"])
        assert "creating container:" in fails(sock, "create", pod_id, str(missing), str(pod_cfg))
        assert "conflict: no-pull and with-pull" in fails(
            sock, "create", "--no-pull", "--with-pull", pod_id, str(good), str(pod_cfg)
        )
        for verb in ("start", "stop", "rm", "inspect", "update"):
            err = fails(sock, verb, unknown)
            assert "NOT_FOUND" in err and unknown in err, (verb, err)
        cid = ok(sock, "create", pod_id, str(good), str(pod_cfg)).strip()
        ok(sock, "start", cid)
        assert "is running, please stop it first" in fails(sock, "rm", cid)
        assert ok(sock, "rm", "-f", "-k", cid) == f"{cid}\n"
        assert (e2e.log_dir / yaml.safe_load(pod_cfg.read_text())["metadata"]["name"] / "keep.log").exists()
        assert "you must specify at least one CONTAINER-ID" in fails(sock, "stop")
        ok(sock, "rmp", "-f", pod_id)


def test_run_pulls_a_missing_image_and_starts(e2e: E2E, tmp_path: Path, unique_repo: str) -> None:
    sock = e2e.daemon.socket
    registry = e2e.images["busybox"].registry
    pushed = push(registry, unique_repo, "v1", unique_image((img.busybox_layer(),)))
    with cleanup(e2e):
        assert ok(sock, "images", "-q", pushed.ref) == ""
        # without pulling the image is missing: the pod that run made is removed again
        command = ["/bin/sh", "-c", "echo hello from run; sleep 600"]
        cfg = ctr_file(tmp_path, pushed.ref, command, name="runner")
        pods_before = {p.id for p in e2e.pods()}
        assert "creating container" in fails(sock, "run", "--no-pull", str(cfg), str(pod_file(e2e, tmp_path)))
        assert {p.id for p in e2e.pods()} == pods_before

        pod_cfg = pod_file(e2e, tmp_path, fmt="yaml")
        cid = ok(sock, "run", "--runtime", "runc", str(cfg), str(pod_cfg)).strip()
        assert re.fullmatch(r"[0-9a-f]{64}", cid)
        assert ok(sock, "images", "-q", pushed.ref).split() == [pushed.image.config.digest]  # type: ignore[union-attr]
        st = e2e.status(cid).status
        assert st.state == pb.CONTAINER_RUNNING
        wait_for(lambda: "hello from run" in ok(sock, "logs", cid), what="the container's first line")
        # the image is now in use: removing it is refused
        assert "FAILED_PRECONDITION" in fails(sock, "rmi", pushed.ref)
        pod_id = e2e.containers(id=cid)[0].pod_sandbox_id
        ok(sock, "rmp", "-f", pod_id)
        assert ok(sock, "rmi", pushed.ref) == f"Deleted: {pushed.ref}\n"


# ---------------------------------------------------------------- logs and exec -s


@pytest.fixture(scope="module")
def pod(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One pod for the log and exec tests: (pod id, pod config file)."""
    tmp = tmp_path_factory.mktemp("cli-pod")
    cfg = pod_file(e2e, tmp)
    pod_id = ok(e2e.daemon.socket, "runp", str(cfg)).strip()
    try:
        yield pod_id, cfg
    finally:
        e2e.remove_pod(pod_id)


def _run_in(e2e: E2E, pod: tuple[str, Path], tmp_path: Path, command: list[str], name: str) -> str:
    sock = e2e.daemon.socket
    cfg = ctr_file(tmp_path, e2e.ref(), command, name=name)
    cid = ok(sock, "create", pod[0], str(cfg), str(pod[1])).strip()
    ok(sock, "start", cid)
    return cid


# The pauses fix the order of the records: conmon reads stdout and stderr separately.
LOG_SCRIPT = "echo one; echo two; sleep 0.3; echo oops >&2; sleep 0.3; echo three; printf 'no newline'"


def test_logs(e2e: E2E, pod: tuple[str, Path], tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    cid = _run_in(e2e, pod, tmp_path, ["/bin/sh", "-c", LOG_SCRIPT], "logger")
    e2e.wait_exited(cid)
    r = ctl(sock, "logs", cid)
    assert r.returncode == 0
    assert (r.stdout, r.stderr) == ("one\ntwo\nthree\nno newline", "oops\n")
    tail = ctl(sock, "logs", "--tail", "3", cid)
    assert (tail.stdout, tail.stderr) == ("three\nno newline", "oops\n")
    assert ok(sock, "logs", "--tail", "2", cid) == "three\nno newline"
    assert ok(sock, "logs", "--tail", "0", cid) == ""
    stamped = ok(sock, "logs", "-t", "--tail", "1", cid)
    assert re.fullmatch(RFC3339 + " no newline", stamped), stamped
    assert ok(sock, "logs", "--since", "1h", cid).startswith("one\n")
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert ctl(sock, "logs", "--since", future, cid).stdout == ""
    only_err = ctl(sock, "logs", "-s", "stderr", cid)
    assert (only_err.stdout, only_err.stderr) == ("", "oops\n")
    assert ok(sock, "logs", "--limit-bytes", "6", cid) == "one\ntw"
    # follow on an exited container prints everything and ends
    assert ok(sock, "logs", "-f", cid, timeout=20) == "one\ntwo\nthree\nno newline"
    err = fails(sock, "logs", "--tail", "1", "-s", "stdout", cid)
    assert "--tail and --stream are mutually exclusive" in err
    assert "invalid stream" in fails(sock, "logs", "-s", "both", cid)
    assert "previous terminated container logger not found" in fails(sock, "logs", "-p", cid)
    assert "invalid --since" in fails(sock, "logs", "--since", "yesterday-ish", cid)
    assert "NOT_FOUND" in fails(sock, "logs", "d" * 64)


def test_logs_follow_until_the_container_exits(e2e: E2E, pod: tuple[str, Path], tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    script = "echo first; sleep 1; echo second; sleep 1; echo last"
    cid = _run_in(e2e, pod, tmp_path, ["/bin/sh", "-c", script], "follower")
    started = time.monotonic()
    out = ok(sock, "logs", "-f", cid, timeout=30)
    assert out == "first\nsecond\nlast\n"
    # it followed the running container (lines came over ~2 s) and stopped on its own
    assert time.monotonic() - started >= 1.0
    assert e2e.status(cid).status.state == pb.CONTAINER_EXITED


def test_exec_sync(e2e: E2E, pod: tuple[str, Path], tmp_path: Path) -> None:
    sock = e2e.daemon.socket
    cid = _run_in(e2e, pod, tmp_path, ["sleep", "600"], "execer")
    assert ok(sock, "exec", "-s", cid, "echo", "hi") == "hi\n"
    r = ctl(sock, "exec", "-s", cid, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert ctl(sock, "exec", "--sync", cid, "/bin/busybox", "false").returncode == 1
    started = time.monotonic()
    err = fails(sock, "exec", "-s", "--timeout", "1", cid, "/bin/busybox", "sleep", "30")
    assert "DEADLINE_EXCEEDED" in err and time.monotonic() - started < 20
    # filters select the container instead of an id
    out = ok(sock, "exec", "-s", "--name", "^execer$", "--pod", pod[0], "echo", "via-filter")
    assert out == f"{cid}:\nvia-filter\n"  # as crictl, the id comes first
    out = ok(sock, "exec", "-s", "-q", "--name", "^execer$", "--pod", pod[0], "echo", "quiet")
    assert out == "quiet\n"
    assert "no containers found per filter flags" in fails(sock, "exec", "-s", "--name", "^nope$", "true")
    assert "NOT_FOUND" in fails(sock, "exec", "-s", "c" * 64, "true")
    assert "usage: exec" in fails(sock, "exec", "-s", cid)
    e2e.stop_ctr(cid)
