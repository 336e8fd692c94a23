"""The Prometheus endpoint of a real daemon, scraped over HTTP and parsed with
prometheus_client's text parser."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pycrio.api import api_pb2 as pb
from pycrio.api import api_pb2_grpc
from tests.e2e.conftest import E2E, needs_host, wait_for

pytestmark = [needs_host, pytest.mark.root]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_endpoint(make_e2e: Callable[..., E2E]) -> None:
    env = make_e2e()
    port = free_port()
    env.daemon.settings["metrics"] = {"enable": True, "address": "127.0.0.1", "port": port}
    env.start()
    pod_cfg = env.pod_config()
    pod_id = env.run_pod(pod_cfg)
    env.run(pod_id, pod_cfg, env.container_config("web", ["/bin/busybox", "sleep", "3600"]))
    oom = env.container_config("oom", ["/bin/busybox", "tail", "/dev/zero"])
    oom.linux.resources.memory_limit_in_bytes = 32 << 20
    oom_id = env.run(pod_id, pod_cfg, oom)
    assert env.wait_exited(oom_id, 30).reason == "OOMKilled"
    with pytest.raises(grpc.RpcError):
        env.status("f" * 64)
    got = scrape(port)
    run_ok = value(got, "pycrio_operations_total", operation="RunPodSandbox", code="OK")
    assert run_ok == 1
    assert value(got, "pycrio_operations_latency_seconds_count", operation="RunPodSandbox", code="OK") == 1
    assert value(got, "pycrio_operations_latency_seconds_sum", operation="RunPodSandbox", code="OK") > 0
    assert value(got, "pycrio_operations_total", operation="ContainerStatus", code="NOT_FOUND") == 1
    assert value(got, "pycrio_operations_total", operation="CreateContainer", code="OK") == 2
    # Both test images were pulled when the environment started.
    assert value(got, "pycrio_image_pulls_total", result="success") == 2
    assert value(got, "pycrio_image_pull_bytes_total") > 100_000
    assert value(got, "pycrio_image_pull_duration_seconds_count", result="success") == 2
    assert value(got, "pycrio_containers", state="running") == 1
    assert value(got, "pycrio_containers", state="exited") == 1
    assert value(got, "pycrio_pods", state="ready") == 1
    assert value(got, "pycrio_containers_oom_total") == 1
    assert value(got, "pycrio_cni_operation_duration_seconds_count", operation="add", result="success") == 1
    oci = "pycrio_oci_runtime_operation_duration_seconds_count"
    assert value(got, oci, operation="create", result="success") == 2
    assert value(got, oci, operation="start", result="success") == 2
    assert value(got, "pycrio_container_events_dropped_total") == 0
    env.remove_pod(pod_id)
    got = scrape(port)
    assert value(got, "pycrio_pods", state="ready") == 0
    assert value(got, "pycrio_cni_operation_duration_seconds_count", operation="del", result="success") == 1


def test_stalled_event_stream_shows_as_backlog(make_e2e: Callable[..., E2E]) -> None:
    env = make_e2e()
    port = free_port()
    env.daemon.settings["metrics"] = {"enable": True, "port": port}
    env.start(pull=False)
    env.daemon.image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=env.ref())), timeout=60)
    # No BDP probing: the stalled stream keeps gRPC's initial 64 kB window.
    channel = grpc.insecure_channel(f"unix:{env.daemon.socket}", options=[("grpc.http2.bdp_probe", 0)])
    try:
        stalled = api_pb2_grpc.RuntimeServiceStub(channel).GetContainerEvents(pb.GetEventsRequest())
        wait_for(
            lambda: value(scrape(port), "pycrio_container_event_subscribers") == 1, 10, what="subscriber"
        )
        pod_cfg = env.pod_config()
        pod_id = env.run_pod(pod_cfg)
        for i in range(8):
            cfg = env.container_config(
                f"c{i}", ["/bin/busybox", "sleep", "3600"], annotations={"pad": "p" * 8000}
            )
            env.run(pod_id, pod_cfg, cfg)
        # Nobody reads: past the stream's window the events wait in the daemon's buffer.
        assert value(scrape(port), "pycrio_container_event_backlog") > 0
        stalled.cancel()
        wait_for(
            lambda: value(scrape(port), "pycrio_container_event_subscribers") == 0, 10, what="unsubscribe"
        )
        assert value(scrape(port), "pycrio_container_event_backlog") == 0
        env.remove_pod(pod_id)
    finally:
        channel.close()


def test_busy_metrics_port_does_not_stop_the_daemon(make_e2e: Callable[..., E2E]) -> None:
    env = make_e2e(network=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env.daemon.settings["metrics"] = {"enable": True, "port": taken.getsockname()[1]}
        env.start(pull=False)
        assert env.rt.Version(pb.VersionRequest()).runtime_name == "pycrio"
        assert "cannot start the metrics endpoint" in env.daemon.log()


def test_metrics_are_off_by_default(e2e: E2E) -> None:
    assert "metrics endpoint listening" not in e2e.daemon.log()
    assert "metrics" not in e2e.daemon.settings
