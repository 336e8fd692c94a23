"""Helpers for the ``pycrioctl`` end-to-end tests (no tests here).

Every command runs the real client as a subprocess (``python -m pycrio.cli.ctl``)
against a real daemon's socket.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.support.oci import File, Image, ImageConfig, build_image, build_layer

CTL = [sys.executable, "-m", "pycrio.cli.ctl"]


def ctl(
    socket: Path, *args: str, input: str | None = None, timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``pycrioctl -r unix://<socket> ARGS``; output captured as text."""
    return subprocess.run(
        [*CTL, "-r", f"unix://{socket}", *args],
        input=input, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd,
    )


def ok(socket: Path, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
    """stdout of a command that must succeed."""
    r = ctl(socket, *args, input=input, timeout=timeout)
    assert r.returncode == 0, f"pycrioctl {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def fails(socket: Path, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
    """stderr of a command that must fail (exit status 1, a pycrioctl message, no traceback)."""
    r = ctl(socket, *args, input=input, timeout=timeout)
    assert r.returncode == 1, f"pycrioctl {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    assert any(line.startswith("pycrioctl: ") for line in r.stderr.splitlines()), r.stderr
    return r.stderr


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """A config file for pycrioctl: YAML for ``*.yaml``, JSON otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(json.dumps(data))
    return path


def unique_image(runnable_layers: tuple[Any, ...] = ()) -> Image:
    """A small image nobody has pulled yet: a layer of its own (after ``runnable_layers``)."""
    token = secrets.token_hex(8)
    marker = build_layer([File(f"etc/marker-{token}", token.encode())])
    return build_image([*runnable_layers, marker], ImageConfig(cmd=["sh"]))
