"""The pure parts of ``pycrioctl``: config files, crictl-style formatting, filters, parsers.

No daemon needed; these pin the details that the end-to-end tests only sample.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path

import pytest

from pycrio.api import api_pb2 as pb
from pycrio.cli import ctl_common as cc
from pycrio.cli.ctl_images import filter_images
from pycrio.cli.ctl_logs import format_timestamp, parse_since
from pycrio.cli.ctl_stream import parse_ports
from pycrio.cli.pullprogress import PlainRenderer, TerminalRenderer
from tests.e2e.test_cli_support import write_config


def test_parse_duration() -> None:
    assert cc.parse_duration("1h30m") == 5400
    assert cc.parse_duration("1.5s") == 1.5
    assert cc.parse_duration("250ms") == pytest.approx(0.25)
    assert cc.parse_duration("42") == 42
    assert cc.parse_duration("-2m") == -120
    for bad in ("", "10x", "m", "1h-3m", "abc"):
        with pytest.raises(ValueError):
            cc.parse_duration(bad)
    with pytest.raises(Exception, match="invalid duration"):
        cc.duration_arg("soon")


def test_parse_since() -> None:
    now = 1_700_000_000.0
    assert parse_since("", now) is None
    assert parse_since("42m", now) == int((now - 42 * 60) * 1e9)
    assert parse_since("1700000000.5", now) == 1_700_000_000_500_000_000
    assert parse_since("2023-11-14T22:13:20Z", now) == 1_700_000_000 * 10**9
    assert parse_since("2023-11-14T23:13:20.25+01:00", now) == 1_700_000_000 * 10**9 + 250_000_000
    naive = dt.datetime(2023, 11, 14, 22, 13, 20).astimezone()  # no zone: local time
    assert parse_since("2023-11-14T22:13:20", now) == int(naive.timestamp()) * 10**9
    assert parse_since("2023-11-14", now) == int(dt.datetime(2023, 11, 14).astimezone().timestamp()) * 10**9
    for bad in ("yesterday", "2023-13-01", "2023-11-14T25:00:00Z"):
        with pytest.raises(cc.CtlError, match="invalid --since"):
            parse_since(bad, now)


def test_log_timestamps_as_go_prints_them() -> None:
    assert format_timestamp(b"2024-05-01T10:00:00.123400000+00:00") == b"2024-05-01T10:00:00.1234Z"
    assert format_timestamp(b"2024-05-01T10:00:00.000000000Z") == b"2024-05-01T10:00:00Z"
    assert format_timestamp(b"2024-05-01T10:00:00.5+02:00") == b"2024-05-01T10:00:00.5+02:00"
    assert format_timestamp(b"garbage") == b"garbage"


def test_human_units() -> None:
    assert cc.human_size(0) == "0B"
    assert cc.human_size(999) == "999B"
    assert cc.human_size(1036323) == "1.04MB"
    assert cc.human_size(1_500_000_000) == "1.5GB"
    assert cc.human_size(1036323, 4) == "1.036MB"
    assert cc.human_duration(0.4) == "Less than a second"
    assert cc.human_duration(1) == "1 second"
    assert cc.human_duration(59) == "59 seconds"
    assert cc.human_duration(61) == "About a minute"
    assert cc.human_duration(15 * 60) == "15 minutes"
    assert cc.human_duration(3600) == "About an hour"
    assert cc.human_duration(5 * 3600) == "5 hours"
    assert cc.human_duration(3 * 86400) == "3 days"
    assert cc.human_duration(20 * 86400) == "2 weeks"
    assert cc.human_duration(100 * 86400) == "3 months"
    assert cc.human_duration(800 * 86400) == "2 years"


def test_times_in_local_zone() -> None:
    ns = 1_700_000_000_123_000_000
    text = cc.rfc3339nano(ns)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.timestamp() == pytest.approx(1_700_000_000.123)
    assert ".123" in text and not text.split("T")[1].split("+")[0].endswith("0")
    assert cc.rfc3339nano(1_700_000_000 * 10**9).count(".") == 0
    offset = time.localtime(1_700_000_000).tm_gmtoff
    assert text.endswith("Z") == (offset == 0)
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert cc.go_time(ns).startswith(local + ".123 ")


def test_table_layout_is_crictls_tabwriter() -> None:
    out = io.StringIO()
    cc.table([["A", "LONG HEADER", "LAST"], ["a" * 25, "b", "tail"]], out)
    first, second = out.getvalue().splitlines()
    assert first == "A".ljust(28) + "LONG HEADER".ljust(20) + "LAST"
    assert second == "a" * 25 + "   " + "b".ljust(20) + "tail"


def test_message_dict_order_and_nulls() -> None:
    st = pb.ContainerStatus(id="x", state=pb.CONTAINER_RUNNING, created_at=5, labels={"b": "1", "a": "2"})
    data = cc.message_dict(st)
    assert list(data)[:3] == ["id", "state", "createdAt"]  # field order; unset metadata left out
    assert data["createdAt"] == "5" and data["state"] == "CONTAINER_RUNNING"
    assert "resources" not in data
    with_nulls = cc.message_dict(st, nulls=True)
    assert with_nulls["resources"] is None and with_nulls["metadata"] is None
    listed = cc.message_dict(pb.ListContainersResponse(containers=[pb.Container(id="c", created_at=1)]))
    assert list(listed["containers"][0])[:2] == ["id", "podSandboxId"]


def test_status_document() -> None:
    doc = cc.status_document({"id": "x"}, {"info": '{"pid": 3}', "plain": '"quoted"', "list": "[1]"})
    assert doc == {"status": {"id": "x"}, "info": {"pid": 3}, "plain": "quoted", "list": "[1]"}
    with pytest.raises(cc.CtlError, match="not valid JSON"):
        cc.status_document({}, {"info": "{broken"})


def test_json_and_yaml_like_go(capsys: pytest.CaptureFixture[str]) -> None:
    cc.output_documents([{"status": {"cmd": "a > b && c < d"}}], "json")
    out = capsys.readouterr().out
    assert "a \\u003e b \\u0026\\u0026 c \\u003c d" in out
    assert json.loads(out)["status"]["cmd"] == "a > b && c < d"
    cc.print_yaml({"b": "", "a": "1036323", "c": "plain", "d": '{"k":"v"}', "e": "true"})
    assert capsys.readouterr().out == 'a: "1036323"\nb: ""\nc: plain\nd: \'{"k":"v"}\'\ne: "true"\n\n'


def test_config_files(tmp_path: Path) -> None:
    snake = write_config(tmp_path / "pod.json", {
        "metadata": {"name": "p", "namespace": "n"},
        "log_directory": "/var/log/p",
        "port_mappings": [{"protocol": 1, "container_port": 80, "host_port": 8080}],
        "unknown_field": True,
    })
    cfg = cc.load_pod_config(str(snake))
    assert cfg.log_directory == "/var/log/p" and cfg.port_mappings[0].protocol == pb.UDP
    assert len(cfg.metadata.uid) == 36  # a uid is made up when the file has none
    camel = write_config(tmp_path / "pod.yaml", {
        "metadata": {"name": "p", "namespace": "n", "uid": "u"},
        "logDirectory": "/var/log/q",
        "portMappings": [{"protocol": "SCTP", "containerPort": 81}],
    })
    cfg = cc.load_pod_config(str(camel))
    assert (cfg.log_directory, cfg.metadata.uid) == ("/var/log/q", "u")
    assert cfg.port_mappings[0].protocol == pb.SCTP
    ctr_data = {"metadata": {"name": "c"}, "image": {"image": "busybox"}, "tty": True, "extra": {"x": 1}}
    ctr = write_config(tmp_path / "c.yaml", ctr_data)
    assert cc.load_container_config(str(ctr)).tty is True
    for data, message in [
        ({"metadata": {"name": "p"}}, "name or namespace is not in metadata"),
        ({"log_directory": "x"}, "metadata is not set"),
        ({"metadata": {"name": "p", "namespace": "n"}, "port_mappings": [{"protocol": "BOGUS"}]}, "BOGUS"),
        ({"metadata": {"name": "p", "namespace": "n", "attempt": "x"}}, "attempt"),
    ]:
        with pytest.raises(cc.CtlError, match=message):
            cc.load_pod_config(str(write_config(tmp_path / "bad.json", data)))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(cc.CtlError, match="must hold a JSON or YAML object"):
        cc.load_container_config(str(tmp_path / "list.yaml"))
    with pytest.raises(cc.CtlError, match="image is not set"):
        cc.load_container_config(str(write_config(tmp_path / "c.json", {"metadata": {"name": "c"}})))


def test_labels_and_ports() -> None:
    assert cc.parse_labels(["a=1", "b=2"]) == {"a": "1", "b": "2"}
    with pytest.raises(cc.CtlError, match="incorrectly specified label: a=b=c"):
        cc.parse_labels(["a=b=c"])
    assert parse_ports(["8080:80", "81", ":82", "0:83"]) == [(8080, 80), (81, 81), (0, 82), (0, 83)]
    for bad in ("x", "1:y", "70000:80", "80:0"):
        with pytest.raises(cc.CtlError):
            parse_ports([bad])


def _image(id_: str, tags: list[str], digests: list[str] | None = None) -> pb.Image:
    return pb.Image(id=id_, repo_tags=tags, repo_digests=digests or [])


def test_image_filters() -> None:
    a = _image("sha256:aaa", ["r/a:1"], ["r/a@sha256:111"])
    b = _image("sha256:bbb", [], ["r/b@sha256:222"])
    c = _image("sha256:ccc", ["r/c:3"], ["r/c@sha256:333"])
    imgs = [a, b, c]
    assert filter_images(imgs, ["dangling=true"]) == [b]
    assert filter_images(imgs, ["dangling=false"]) == [a, c]
    assert filter_images(imgs, ["reference=r/[ab]"]) == [a, b]
    assert filter_images(imgs, ["since=r/c:3"]) == [a, b]
    assert filter_images(imgs, ["before=r/a:1"]) == [b, c]
    assert filter_images(imgs, ["before=bbb"]) == [c]
    for bad in ("dangling=maybe", "reference=(", "size=1", "novalue"):
        with pytest.raises(cc.CtlError):
            filter_images(imgs, [bad])


def test_progress_renderers() -> None:
    pull = {"state": "pulling", "layers": [
        {"digest": "sha256:" + "a" * 64, "done": 500, "total": 1000, "state": "downloading"},
        {"digest": "sha256:" + "b" * 64, "done": 0, "total": 10, "state": "exists"},
    ]}
    out = io.StringIO()
    plain = PlainRenderer(out, "img")
    plain.update(pull)
    plain.update(pull)  # nothing changed: nothing written
    assert out.getvalue() == (
        "img: pulling\n" f"sha256:{'a' * 64}: downloading 1kB\n" f"sha256:{'b' * 64}: exists 10B\n"
    )
    out = io.StringIO()
    term = TerminalRenderer(out, "img")
    term.update(pull)
    term.update(pull)
    text = out.getvalue()
    assert text.count("\x1b[2K") == 6 and text.count("\x1b[3A\r") == 1
    assert "[" + "=" * 15 + ">" + " " * 14 + "] 500B/1kB" in text
    assert "exists      [" + "=" * 30 + "] 10B/10B" in text
