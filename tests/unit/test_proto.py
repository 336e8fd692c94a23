"""The committed stubs must match api.proto, and the proto must be complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pycrio.api import api_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_are_fresh(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out}",
            f"--grpc_python_out={out}", str(ROOT / "pycrio/api/api.proto"),
        ],
        check=True,
    )
    for name in ("api_pb2.py", "api_pb2_grpc.py"):
        fresh = (out / "pycrio/api" / name).read_text()
        committed = (ROOT / "pycrio/api" / name).read_text()
        assert fresh == committed, f"pycrio/api/{name} is stale: run `make proto`"


def test_all_41_rpcs_present() -> None:
    services = api_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"RuntimeService", "ImageService"}
    methods = [m.name for s in services.values() for m in s.methods]
    assert len(methods) == 41
    for name in ("StreamPodSandboxes", "StreamContainers", "StreamContainerStats",
                 "StreamPodSandboxStats", "StreamPodSandboxMetrics", "StreamImages"):
        assert name in methods
    assert api_pb2.DESCRIPTOR.package == "runtime.v1"


def test_wire_facts_spot_checks() -> None:
    # A few field numbers and types that a mismatch would break on the wire.
    cfg = api_pb2.ContainerConfig.DESCRIPTOR.fields_by_name
    assert cfg["metadata"].number == 1 and cfg["image"].number == 2 and cfg["linux"].number == 15
    auth = api_pb2.AuthConfig.DESCRIPTOR.fields_by_name
    assert auth["registry_token"].number == 6
    resp = api_pb2.PullImageResponse.DESCRIPTOR.fields_by_name
    assert resp["image_ref"].number == 1
    assert api_pb2.ContainerState.Value("CONTAINER_UNKNOWN") == 3
