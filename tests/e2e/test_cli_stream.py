"""``pycrioctl exec``, ``attach`` and ``port-forward`` through the daemon's streaming server.

Real pods in the e2e daemon; the client runs as a subprocess with pipes, or with a
pseudo-terminal for ``exec -it``.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycrio.api import api_pb2 as pb
from tests.e2e.conftest import E2E, needs_host
from tests.e2e.test_cli_pods import ctr_file, pod_file
from tests.e2e.test_cli_support import CTL, ctl, fails, ok
from tests.support.images import WEB_PAGE

pytestmark = [needs_host, pytest.mark.root]

TRANSPORTS = ["spdy", "websocket"]


@pytest.fixture(scope="module")
def pod(e2e: E2E, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    """A pod running busybox httpd: (pod id, pod config file, container id)."""
    tmp = tmp_path_factory.mktemp("cli-stream")
    sock = e2e.daemon.socket
    cfg = pod_file(e2e, tmp)
    pod_id = ok(sock, "runp", str(cfg)).strip()
    try:
        web = ctr_file(tmp, e2e.ref("web"), [], name="web")
        cid = ok(sock, "create", pod_id, str(web), str(cfg)).strip()
        ok(sock, "start", cid)
        yield pod_id, cfg, cid
    finally:
        e2e.remove_pod(pod_id)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_exec_pipes_stdin_and_returns_the_exit_code(
    e2e: E2E, pod: tuple[str, Path, str], transport: str
) -> None:
    sock, cid = e2e.daemon.socket, pod[2]
    data = "".join(f"line {i}\n" for i in range(2000))
    r = ctl(sock, "exec", "-i", "--transport", transport, cid, "/bin/busybox", "cat", input=data)
    assert (r.returncode, r.stdout) == (0, data), r.stderr
    r = ctl(sock, "exec", "-r", transport, cid, "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "to-out\n", "to-err\n")
    # stdin not asked for: the command sees it closed at once
    r = ctl(sock, "exec", "-r", transport, cid, "/bin/busybox", "wc", "-c", input="ignored")
    assert (r.returncode, r.stdout.strip()) == (0, "0")


def test_exec_failures(e2e: E2E, pod: tuple[str, Path, str]) -> None:
    sock, cid = e2e.daemon.socket, pod[2]
    assert "NOT_FOUND" in fails(sock, "exec", "b" * 64, "true")
    assert "tty=true must be specified with interactive=true" in fails(sock, "exec", "-t", cid, "true")
    assert "input is not a terminal" in fails(sock, "exec", "-it", cid, "sh", input="")
    r = ctl(sock, "exec", "--transport", "carrier-pigeon", cid, "true")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    # a command that cannot start is an error of the session, not a crash of the client
    r = ctl(sock, "exec", cid, "/no/such/binary")
    assert r.returncode != 0 and "Traceback" not in r.stderr


def _read_until(fd: int, proc: subprocess.Popen[bytes], want: bytes, limit: float) -> bytes:
    """Read a pty until ``want`` shows up, the client ends, or ``limit`` seconds pass."""
    out = b""
    deadline = time.monotonic() + limit
    while want not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the client closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_exec_interactive_tty(e2e: E2E, pod: tuple[str, Path, str]) -> None:
    sock, cid = e2e.daemon.socket, pod[2]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 97, 0, 0))
    proc = subprocess.Popen(
        [*CTL, "-r", f"unix://{sock}", "exec", "-it", cid, "sh"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )
    os.close(slave)
    try:
        assert b"# " in _read_until(master, proc, b"# ", 20)  # the shell's prompt
        # the remote terminal has the local one's size; the local one is in raw mode
        attrs = termios.tcgetattr(master)
        assert not attrs[3] & termios.ICANON
        os.write(master, b"stty size; echo sum-$((20+22)); exit 5\r")
        out = _read_until(master, proc, b"sum-42", 20)
        assert b"33 97" in out and b"sum-42" in out, out
        assert proc.wait(20) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_attach_with_stdin(e2e: E2E, pod: tuple[str, Path, str], tmp_path: Path) -> None:
    sock, pod_id, cfg = e2e.daemon.socket, pod[0], pod[1]
    cat = ctr_file(tmp_path, e2e.ref(), ["/bin/busybox", "cat"], name="cat", stdin=True, stdin_once=True)
    cid = ok(sock, "create", pod_id, str(cat), str(cfg)).strip()
    ok(sock, "start", cid)
    r = ctl(sock, "attach", "-i", cid, input="through attach\n", timeout=30)
    assert (r.returncode, r.stdout) == (0, "through attach\n"), r.stderr
    # stdin_once: closing our stdin ended the container
    assert e2e.wait_exited(cid).exit_code == 0
    assert ok(sock, "logs", cid) == "through attach\n"
    assert "NOT_FOUND" in fails(sock, "attach", "a" * 64)
    assert "tty=true must be specified with interactive=true" in fails(sock, "attach", "-t", cid)
    ok(sock, "rm", cid)


def _forward(sock: Path, *args: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``port-forward`` and return it with the local port it printed."""
    proc = subprocess.Popen(
        [*CTL, "-r", f"unix://{sock}", "port-forward", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the client prints it or exits
    if not line.startswith("Forwarding from 127.0.0.1:"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"port-forward did not start: {line!r} {err}")
    local = int(line.split(":")[1].split()[0])
    assert line.rstrip().endswith("-> 80")
    return proc, local


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_port_forward_to_httpd(e2e: E2E, pod: tuple[str, Path, str], transport: str) -> None:
    sock, pod_id = e2e.daemon.socket, pod[0]
    proc, local = _forward(sock, "--transport", transport, pod_id, "0:80")
    try:
        for _ in range(3):  # several connections over one session
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as resp:
                assert resp.read() == WEB_PAGE
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0


def test_port_forward_failures(e2e: E2E, pod: tuple[str, Path, str]) -> None:
    sock = e2e.daemon.socket
    assert "NOT_FOUND" in fails(sock, "port-forward", "9" * 64, "80")
    assert "invalid port specification 'http'" in fails(sock, "port-forward", pod[0], "http")
    assert "ports are 1-65535" in fails(sock, "port-forward", pod[0], "8080:0")


def test_pod_stays_healthy(e2e: E2E, pod: tuple[str, Path, str]) -> None:
    """After the sessions above, the web container still runs (nothing killed it)."""
    assert e2e.status(pod[2]).status.state == pb.CONTAINER_RUNNING
