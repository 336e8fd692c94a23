"""The CRI log format: records, timestamps, partial lines, incremental reading, tail."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycrio.oci import crilog
from pycrio.oci.crilog import CRILogError, LogReader, LogRecord

CONMON_LOG = (
    b"2024-05-01T10:00:00.123456789+02:00 stdout F hello\n"
    b"2024-05-01T10:00:00.123456789+02:00 stderr F oops\n"
    b"2024-05-01T10:00:00.223456789+02:00 stdout P part one \n"
    b"2024-05-01T10:00:00.223456789+02:00 stdout F and two\n"
    b"2024-05-01T10:00:00.323456789+02:00 stdout P no newline at end\n"
)


def test_parse_full_and_partial() -> None:
    rec = crilog.parse_record(b"2016-10-06T00:17:09.669794202Z stdout F The content of the log entry 1\n")
    ts = b"2016-10-06T00:17:09.669794202Z"
    assert rec == LogRecord(ts, "stdout", False, b"The content of the log entry 1")
    assert rec.data == b"The content of the log entry 1\n"
    part = crilog.parse_record(b"2016-10-06T00:17:09.669794202Z stderr P First line")
    assert part.partial and part.stream == "stderr"
    assert part.data == b"First line"


def test_content_keeps_spaces_and_may_be_empty() -> None:
    assert crilog.parse_record(b"2016-10-06T00:17:09Z stdout F   a  b ").content == b"  a  b "
    assert crilog.parse_record(b"2016-10-06T00:17:09Z stdout F ").content == b""
    assert crilog.parse_record(b"2016-10-06T00:17:09Z stdout F").content == b""


def test_tag_with_extra_fields() -> None:
    assert crilog.parse_record(b"2016-10-06T00:17:09Z stdout P:x:y hi").partial


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b"2016-10-06T00:17:09Z stdin F x",
        b"2016-10-06T00:17:09Z stdout X x",
        b"yesterday stdout F x",
        b"2016-10-06 stdout F x",
    ],
)
def test_malformed(line: bytes) -> None:
    with pytest.raises(CRILogError):
        crilog.parse_record(line)


def test_timestamps() -> None:
    z = crilog.parse_timestamp("2016-10-06T00:17:09.669794202Z")
    assert z == 1475713029 * 10**9 + 669794202
    # The same instant written by conmon with a local offset.
    assert crilog.parse_timestamp(b"2016-10-06T02:17:09.669794202+02:00") == z
    assert crilog.parse_timestamp(b"2016-10-05T19:17:09.669794202-05:00") == z
    # Short fractions and none at all.
    assert crilog.parse_timestamp("2016-10-06T00:17:09.5Z") == 1475713029 * 10**9 + 500_000_000
    assert crilog.parse_timestamp("2016-10-06T00:17:09Z") == 1475713029 * 10**9
    with pytest.raises(CRILogError):
        crilog.parse_timestamp("2016-13-06T00:17:09Z")
    with pytest.raises(CRILogError):
        crilog.parse_timestamp("2016-10-06T00:17:09.1234567890Z")


def test_format_roundtrip() -> None:
    ns = 1475713029 * 10**9 + 1
    assert crilog.format_timestamp(ns) == b"2016-10-06T00:17:09.000000001Z"
    line = crilog.format_record("stderr", b"x y", partial=True, ts_ns=ns)
    assert line == b"2016-10-06T00:17:09.000000001Z stderr P x y\n"
    rec = crilog.parse_record(line)
    assert rec.time_ns == ns and rec.partial and rec.content == b"x y"
    with pytest.raises(ValueError):
        crilog.format_record("stdout", b"two\nlines")
    with pytest.raises(ValueError):
        crilog.format_record("stdin", b"x")


def test_split_streams_rebuilds_output() -> None:
    out, err = crilog.split_streams(CONMON_LOG)
    assert out == b"hello\npart one and two\nno newline at end"
    assert err == b"oops\n"


def test_split_streams_skips_bad_lines() -> None:
    data = b"junk\n" + CONMON_LOG + b"\n\n2024-05-01T10:00:00Z stdout F"
    out, err = crilog.split_streams(data)
    assert out == b"hello\npart one and two\nno newline at end\n"
    assert err == b"oops\n"
    with pytest.raises(CRILogError):
        list(crilog.iter_records(b"junk\n", strict=True))


def test_reader_across_chunks() -> None:
    r = LogReader()
    got: list[LogRecord] = []
    # Feed one byte at a time: records only come out once their newline is in.
    for i in range(len(CONMON_LOG)):
        got += r.feed(CONMON_LOG[i : i + 1])
    assert [g.content for g in got] == [b"hello", b"oops", b"part one ", b"and two", b"no newline at end"]
    assert r.pending == 0
    assert r.feed(b"2024-05-01T10:00:00Z stdout F unfinished") == []
    assert r.pending > 0
    assert [x.content for x in r.feed(b" line\n")] == [b"unfinished line"]


def test_reader_drops_overlong_and_malformed() -> None:
    r = LogReader(max_record=64)
    assert r.feed(b"2024-05-01T10:00:00Z stdout F " + b"x" * 100) == []
    assert r.pending == 0
    # The rest of the overlong line is dropped too, then parsing resumes.
    got = r.feed(b"yyy\nnot a record\n2024-05-01T10:00:00Z stdout F ok\n")
    assert [g.content for g in got] == [b"ok"]
    assert r.skipped == 2


def test_tail_offset(tmp_path: Path) -> None:
    p = tmp_path / "log"
    lines = [crilog.format_record("stdout", b"line %d" % i, ts_ns=i) for i in range(1000)]
    p.write_bytes(b"".join(lines))
    data = p.read_bytes()
    for n in (1, 2, 10, 999):
        off = crilog.tail_offset(p, n, block=100)
        assert data[off:] == b"".join(lines[-n:])
    assert crilog.tail_offset(p, 1000, block=100) == 0
    assert crilog.tail_offset(p, 5000) == 0
    assert crilog.tail_offset(p, 0) == len(data)
    assert crilog.tail_offset(p, -1) == 0
    # A last record still being written counts as a record.
    p.write_bytes(data + b"2024-05-01T10:00:00Z stdout P tail")
    off = crilog.tail_offset(p, 2, block=7)
    assert p.read_bytes()[off:] == lines[-1] + b"2024-05-01T10:00:00Z stdout P tail"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert crilog.tail_offset(empty, 3) == 0
