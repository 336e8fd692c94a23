"""The real daemon as a subprocess: gRPC basics, configuration, signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import grpc
import pytest

from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc
from tests.support.daemon import PycrioDaemon, run_pycrio


def conditions(resp: pb.StatusResponse) -> dict[str, pb.RuntimeCondition]:
    return {c.type: c for c in resp.status.conditions}


def test_version(daemon: PycrioDaemon) -> None:
    v = daemon.runtime.Version(pb.VersionRequest(), timeout=5)
    assert v.runtime_name == "pycrio"
    assert v.runtime_api_version == "v1"
    assert v.runtime_version
    # The image service answers on the same socket.
    assert daemon.image.ImageFsInfo is not None


def test_socket_mode_is_0660(daemon: PycrioDaemon) -> None:
    st = daemon.socket.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_status_network_follows_cni_config(daemon: PycrioDaemon) -> None:
    cond = conditions(daemon.runtime.Status(pb.StatusRequest(), timeout=5))
    assert cond["RuntimeReady"].status is True
    assert cond["NetworkReady"].status is False
    assert cond["NetworkReady"].reason
    assert str(daemon.cni_dir) in cond["NetworkReady"].message
    conf = {"cniVersion": "0.4.0", "name": "t", "plugins": [{"type": "loopback"}]}
    (daemon.cni_dir / "10-t.conflist").write_text(json.dumps(conf))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cond = conditions(daemon.runtime.Status(pb.StatusRequest(), timeout=5))
        if cond["NetworkReady"].status:
            break
        time.sleep(0.1)
    assert cond["NetworkReady"].status is True


def test_status_verbose_returns_effective_config(daemon: PycrioDaemon) -> None:
    resp = daemon.runtime.Status(pb.StatusRequest(verbose=True), timeout=5)
    cfg = json.loads(resp.info["config"])
    assert cfg["root"] == str(daemon.root)
    assert cfg["listen"] == str(daemon.socket)
    assert {h.name for h in resp.runtime_handlers} >= {"", "runc", "crun"}


def test_runtime_config_reports_cgroup_driver(daemon: PycrioDaemon) -> None:
    resp = daemon.runtime.RuntimeConfig(pb.RuntimeConfigRequest(), timeout=5)
    assert resp.linux.cgroup_driver == pb.CGROUPFS


def test_every_rpc_answers_with_a_status(daemon: PycrioDaemon) -> None:
    """No RPC may hang or fail with an unhandled exception (UNKNOWN/INTERNAL)."""
    allowed = {
        grpc.StatusCode.OK,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
    }
    assert daemon.channel is not None
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            req_cls = getattr(pb, method.input_type.name)
            resp_cls = getattr(pb, method.output_type.name)
            path = f"/{service.full_name}/{method.name}"
            if method.server_streaming:
                call = daemon.channel.unary_stream(
                    path, request_serializer=req_cls.SerializeToString,
                    response_deserializer=resp_cls.FromString,
                )
                try:
                    for _ in call(req_cls(), timeout=3):
                        pass
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                # An event stream legitimately stays open until the deadline.
                ok = allowed | ({grpc.StatusCode.DEADLINE_EXCEEDED} if method.name == "GetContainerEvents"
                                else set())
                assert code in ok, f"{method.name}: {code}"
            else:
                call = daemon.channel.unary_unary(
                    path, request_serializer=req_cls.SerializeToString,
                    response_deserializer=resp_cls.FromString,
                )
                try:
                    call(req_cls(), timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        assert method.name in (exc.details() or "")
                assert code in allowed, f"{method.name}: {code}"


def test_second_daemon_on_same_socket_refuses(daemon: PycrioDaemon, tmp_path: Path) -> None:
    other = PycrioDaemon(tmp_path / "other", {"listen": str(daemon.socket)})
    other.start(wait=False)
    assert other.proc is not None
    code = other.proc.wait(30)
    other.stop()
    assert code != 0
    assert "already serving" in other.log()
    # The first daemon still answers.
    assert daemon.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "pycrio"


def test_second_daemon_on_same_root_refuses(daemon: PycrioDaemon, tmp_path: Path) -> None:
    other = PycrioDaemon(
        tmp_path / "other", {"root": str(daemon.root), "listen": str(tmp_path / "o.sock")}
    )
    other.start(wait=False)
    assert other.proc is not None
    code = other.proc.wait(30)
    other.stop()
    assert code != 0
    assert "another pycrio daemon is using root" in other.log()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    import socket as so

    d = PycrioDaemon(tmp_path / "d")
    d.base.mkdir(parents=True)
    # A socket file with nobody listening, as a crash leaves it.
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.bind(str(d.socket))
    s.close()
    try:
        d.start()
        assert d.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "pycrio"
    finally:
        d.stop()


def test_non_socket_path_is_not_replaced(tmp_path: Path) -> None:
    d = PycrioDaemon(tmp_path / "d")
    d.base.mkdir(parents=True)
    d.socket.write_text("precious")
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) != 0
    d.stop()
    assert d.socket.read_text() == "precious"
    assert "not a socket" in d.log()


def test_sigterm_stops_cleanly_and_releases_socket(tmp_path: Path) -> None:
    d = PycrioDaemon(tmp_path / "d")
    d.start()
    assert d.stop(signal.SIGTERM) == 0
    assert not d.socket.exists()
    assert "pycrio stopped" in d.log()


def test_sigint_stops_cleanly(tmp_path: Path) -> None:
    d = PycrioDaemon(tmp_path / "d")
    d.start()
    assert d.stop(signal.SIGINT) == 0
    assert not d.socket.exists()


def test_sighup_reloads_live_keys(daemon: PycrioDaemon) -> None:
    (daemon.config_dir / "50-reload.toml").write_text('log_level = "info"\nroot = "/elsewhere"\n')
    daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "needs a restart" not in daemon.log():
        time.sleep(0.05)
    log = daemon.log()
    assert "configuration reloaded" in log and "key=log_level" in log
    assert "needs a restart" in log and "key=root" in log
    # Debug lines stop after the level went up to info.
    marker = len(daemon.log())
    daemon.runtime.Version(pb.VersionRequest(), timeout=5)
    assert "method=Version" not in daemon.log()[marker:]


def test_sighup_with_broken_file_keeps_running(daemon: PycrioDaemon) -> None:
    (daemon.config_dir / "60-bad.toml").write_text("log_level = [\n")
    daemon.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "reload failed" not in daemon.log():
        time.sleep(0.05)
    assert "reload failed" in daemon.log()
    assert daemon.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name == "pycrio"


def test_json_log_format(tmp_path: Path) -> None:
    d = PycrioDaemon(tmp_path / "d", {"log_format": "json"})
    try:
        d.start()
        d.runtime.Version(pb.VersionRequest(), timeout=5)
    finally:
        d.stop()
    lines = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    assert any(r["msg"] == "pycrio started" and r["level"] == "info" for r in lines)
    assert any(r.get("method") == "Version" for r in lines)


def test_bad_config_stops_daemon_with_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[image]\nmax_parallel_downloads = 'many'\n")
    proc = run_pycrio(["--config", str(bad), "--config-dir", str(tmp_path / "none-d"), "config"])
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "image.max_parallel_downloads" in proc.stderr
    assert "integer" in proc.stderr


def test_config_command_prints_toml_the_daemon_accepts(tmp_path: Path) -> None:
    main = tmp_path / "p.toml"
    main.write_text('log_level = "warning"\n[cni]\nconf_dir = "/x"\n')
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "10.toml").write_text('log_level = "error"\n')
    proc = run_pycrio(["--config", str(main), "--config-dir", str(drop), "--cni-config-dir", "/y", "config"])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "effective.toml"
    out.write_text(proc.stdout)
    again = run_pycrio(["--config", str(out), "--config-dir", str(tmp_path / "nothing-here"), "config"])
    assert again.returncode == 0, again.stderr
    assert again.stdout == proc.stdout
    assert 'log_level = "error"' in proc.stdout
    assert 'conf_dir = "/y"' in proc.stdout


def test_unix_endpoint_forms(daemon: PycrioDaemon) -> None:
    for target in (f"unix:{daemon.socket}", f"unix://{daemon.socket}"):
        with grpc.insecure_channel(target) as ch:
            stub = api_pb2_grpc.RuntimeServiceStub(ch)
            assert stub.Version(pb.VersionRequest(), timeout=5).runtime_api_version == "v1"


def test_pycrioctl_version_and_info(daemon: PycrioDaemon) -> None:
    import subprocess
    import sys

    env = dict(os.environ, CONTAINER_RUNTIME_ENDPOINT=f"unix://{daemon.socket}")
    out = subprocess.run([sys.executable, "-m", "pycrio.cli.ctl", "version"], capture_output=True,
                         text=True, env=env, check=True, timeout=30).stdout
    assert "RuntimeName:  pycrio" in out
    out = subprocess.run([sys.executable, "-m", "pycrio.cli.ctl", "info"], capture_output=True,
                         text=True, env=env, check=True, timeout=30).stdout
    data = json.loads(out)
    types = {c["type"] for c in data["status"]["conditions"]}
    assert types == {"RuntimeReady", "NetworkReady"}
    assert data["config"]["listen"] == str(daemon.socket)


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_pycrioctl_machine_output(daemon: PycrioDaemon, output: str) -> None:
    import subprocess
    import sys

    import yaml

    out = subprocess.run(
        [sys.executable, "-m", "pycrio.cli.ctl", "-r", f"unix://{daemon.socket}", "version", "-o", output],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    data = json.loads(out) if output == "json" else yaml.safe_load(out)
    assert data["runtimeName"] == "pycrio"
