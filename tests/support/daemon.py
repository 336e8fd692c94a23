"""Run the real ``pycrio`` daemon as a subprocess for tests.

Each instance gets its own root, runroot, socket and configuration under a
temporary directory, so tests never touch /var/lib/pycrio or /run/pycrio.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import tomli_w

from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc


class PycrioDaemon:
    """One pycrio process and gRPC stubs to talk to it."""

    def __init__(
        self,
        base: Path,
        settings: dict[str, Any] | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.base = base
        self.root = base / "root"
        self.runroot = base / "run"
        self.socket = base / "pycrio.sock"
        self.config_file = base / "pycrio.toml"
        self.config_dir = base / "pycrio.d"
        self.log_file = base / "pycrio.log"
        self.cni_dir = base / "cni"
        self.settings: dict[str, Any] = {
            "root": str(self.root),
            "runroot": str(self.runroot),
            "listen": str(self.socket),
            "log_level": "debug",
            "cni": {"conf_dir": str(self.cni_dir)},
        }
        _deep_update(self.settings, settings or {})
        self.args = args or []
        # Extra environment for the daemon process (e.g. PYCRIO_CRASH_AT); may change between starts.
        self.env: dict[str, str] = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.runtime: Any = None
        self.image: Any = None

    def write_config(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_dir.mkdir(exist_ok=True)
        self.cni_dir.mkdir(exist_ok=True)
        self.config_file.write_text(tomli_w.dumps(self.settings))

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "pycrio.cli.daemon",
            "--config", str(self.config_file), "--config-dir", str(self.config_dir), *self.args,
        ]

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        self.write_config()
        self._log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"pycrio exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    self.runtime.Version(pb.VersionRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"pycrio did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Stop the daemon (SIGTERM by default, SIGKILL to simulate a crash)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


@contextmanager
def running_daemon(base: Path, settings: dict[str, Any] | None = None) -> Iterator[PycrioDaemon]:
    daemon = PycrioDaemon(base, settings)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def run_pycrio(args: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``pycrio`` with arguments (e.g. ``config``) and capture its output."""
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "pycrio.cli.daemon", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
