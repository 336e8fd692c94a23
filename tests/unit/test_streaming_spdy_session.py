"""The sans-IO SPDY session: stream life cycle and flow-control windows."""

from __future__ import annotations

import pytest

from pycrio.streaming import spdy
from pycrio.streaming import spdy_session as ss


def pair(**server_kw: object) -> tuple[ss.SpdySession, ss.SpdySession]:
    client = ss.SpdySession(client=True)
    server = ss.SpdySession(client=False, **server_kw)  # type: ignore[arg-type]
    return client, server


def pump(src: ss.SpdySession, dst: ss.SpdySession) -> list[ss.Event]:
    return dst.receive_data(src.data_to_send())


def test_open_reply_data_fin() -> None:
    client, server = pair()
    sid = client.open_stream({"streamtype": ["stdout"]})
    assert sid == 1
    (opened,) = pump(client, server)
    assert isinstance(opened, ss.StreamOpened) and opened.headers == {"streamtype": ["stdout"]}
    server.reply(sid)
    server.send_data(sid, b"hello", fin=True)
    events = pump(server, client)
    assert isinstance(events[0], ss.ReplyReceived)
    assert events[1] == ss.DataReceived(sid, b"hello", True)
    # Half-closed from the server; the client closes too and the stream is gone on both sides.
    assert server.is_open(sid)
    client.end_stream(sid)
    pump(client, server)
    assert not server.is_open(sid) and not client.is_open(sid)
    with pytest.raises(ss.StreamClosedError):
        server.send_data(sid, b"late")


def test_legacy_peer_is_not_held_to_windows() -> None:
    # spdystream never sends WINDOW_UPDATE: we must keep sending past 64 KiB.
    client, server = pair()
    sid = client.open_stream({})
    pump(client, server)
    server.reply(sid)
    assert server.send_window(sid) is None
    for _ in range(10):
        server.send_data(sid, b"x" * 60000)
    received = sum(len(e.data) for e in pump(server, client) if isinstance(e, ss.DataReceived))
    assert received == 600000


def test_window_enforced_once_peer_speaks_flow_control() -> None:
    client, server = pair()
    client.initiate()  # nothing to announce with default windows
    sid = client.open_stream({})
    client.send_settings([(0, spdy.SettingId.INITIAL_WINDOW_SIZE, 1000)])
    pump(client, server)
    server.reply(sid)
    assert server.flow_control_active
    assert server.send_window(sid) == 1000
    server.send_data(sid, b"a" * 600)
    assert server.send_window(sid) == 400
    with pytest.raises(ss.FlowControlError):
        server.send_data(sid, b"b" * 401)
    events = pump(server, client)
    assert any(isinstance(e, ss.DataReceived) for e in events)
    # The client consumed 600 bytes: past half its 64 KiB window? No, so no update yet.
    client.acknowledge(sid, 600)
    assert client.data_to_send() == b""


def test_window_update_reopens_stream_and_session() -> None:
    client, server = pair()
    sid = client.open_stream({})
    pump(client, server)
    server.reply(sid)
    client.receive_data(server.data_to_send())
    # A strict peer: announce flow control and then eat the whole default window.
    client.send_settings([])
    pump(client, server)
    server.send_data(sid, b"z" * spdy.DEFAULT_WINDOW)
    assert server.send_window(sid) == 0
    client.receive_data(server.data_to_send())
    client.acknowledge(sid, spdy.DEFAULT_WINDOW)
    events = pump(client, server)
    assert ss.WindowOpened(sid) in events and ss.WindowOpened(0) in events
    assert server.send_window(sid) == spdy.DEFAULT_WINDOW


def test_settings_initial_window_shifts_open_streams() -> None:
    client, server = pair()
    sid = client.open_stream({})
    pump(client, server)
    server.reply(sid)
    client.send_settings([(0, spdy.SettingId.INITIAL_WINDOW_SIZE, 10)])
    pump(client, server)
    assert server.send_window(sid) == 10
    client.send_settings([(0, spdy.SettingId.INITIAL_WINDOW_SIZE, 50)])
    events = pump(client, server)
    assert ss.WindowOpened(sid) in events
    assert server.send_window(sid) == 50


def test_initiate_announces_large_windows() -> None:
    client = ss.SpdySession(client=True, receive_window=1 << 20, session_receive_window=1 << 23)
    server = ss.SpdySession(client=False)
    client.initiate()
    events = pump(client, server)
    assert ss.SettingsChanged({spdy.SettingId.INITIAL_WINDOW_SIZE: 1 << 20}) in events
    assert ss.WindowOpened(0) in events
    sid = client.open_stream({})
    pump(client, server)
    server.reply(sid)
    assert server.send_window(sid) == 1 << 20  # min(stream 1 MiB, session 8 MiB)


def test_receiver_sends_window_updates_for_consumed_data() -> None:
    client, server = pair()
    sid = client.open_stream({})
    pump(client, server)
    server.reply(sid)
    pump(server, client)
    client.send_data(sid, b"q" * 40000)
    pump(client, server)
    server.acknowledge(sid, 40000)  # past half of 64 KiB: stream and session updates
    frames = spdy.FrameReader().feed(server.data_to_send())
    assert spdy.WindowUpdate(sid, 40000) in frames
    assert spdy.WindowUpdate(0, 40000) in frames


@pytest.mark.parametrize("enforce", [False, True])
def test_overflowing_a_window(enforce: bool) -> None:
    client, server = pair(enforce_receive_window=enforce)
    sid = client.open_stream({})
    client.send_settings([])  # the client speaks flow control...
    pump(client, server)
    server.reply(sid)
    pump(server, client)
    # ...but sends more than the 64 KiB it was granted.
    client._streams[sid].send_window = 1 << 30
    client._session_send_window = 1 << 30
    client.send_data(sid, b"o" * (spdy.DEFAULT_WINDOW + 1))
    events = pump(client, server)
    if enforce:
        assert ss.StreamReset(sid, spdy.RstStatus.FLOW_CONTROL_ERROR) in events
        assert not server.is_open(sid)
    else:  # tolerated when asked to be lenient
        assert [type(e) for e in events] == [ss.DataReceived]
        assert server.is_open(sid)


def test_pings_are_echoed_and_acknowledged() -> None:
    client, server = pair()
    ping_id = client.ping()
    assert ping_id % 2 == 1
    assert pump(client, server) == [ss.PingReceived(ping_id)]
    assert pump(server, client) == [ss.PingAcknowledged(ping_id)]


def test_bad_stream_ids_are_refused() -> None:
    server = ss.SpdySession(client=False)
    writer = spdy.FrameWriter()
    raw = writer.serialize(spdy.SynStream(2, {}))  # even id from a client
    raw += writer.serialize(spdy.SynStream(5, {}))
    raw += writer.serialize(spdy.SynStream(3, {}))  # goes backwards
    events = server.receive_data(raw)
    assert [e.stream_id for e in events if isinstance(e, ss.StreamOpened)] == [5]
    resets = [f for f in spdy.FrameReader().feed(server.data_to_send()) if isinstance(f, spdy.RstStream)]
    assert [(r.stream_id, r.status) for r in resets] == [(2, 1), (3, 1)]


def test_goaway_refuses_new_streams() -> None:
    client, server = pair()
    server.goaway()
    assert client.receive_data(server.data_to_send()) == [ss.GoAwayReceived(0, 0)]
    with pytest.raises(ss.StreamClosedError):
        client.open_stream({})
    raw = spdy.FrameWriter().serialize(spdy.SynStream(1, {}))
    assert server.receive_data(raw) == []
    (rst,) = spdy.FrameReader().feed(server.data_to_send())
    assert rst == spdy.RstStream(1, spdy.RstStatus.REFUSED_STREAM)


def test_reset_and_late_data() -> None:
    client, server = pair()
    sid = client.open_stream({})
    pump(client, server)
    server.reply(sid)
    pump(server, client)
    server.reset_stream(sid)
    assert pump(server, client) == [ss.StreamReset(sid, spdy.RstStatus.CANCEL)]
    # Data already in flight towards the server is dropped without a second RST.
    late = spdy.FrameWriter().serialize(spdy.DataFrame(sid, b"late"))
    assert server.receive_data(late) == []
    assert server.data_to_send() == b""


def test_protocol_error_sends_goaway() -> None:
    server = ss.SpdySession(client=False)
    with pytest.raises(spdy.SpdyError):
        server.receive_data(b"\x80\x03\x00\x06\x00\x00\x00\x02\x00\x00")
    frames = spdy.FrameReader().feed(server.data_to_send())
    assert frames == [spdy.GoAway(0, spdy.GoAwayStatus.PROTOCOL_ERROR)]


def test_invalid_windows_rejected() -> None:
    with pytest.raises(ValueError):
        ss.SpdySession(client=True, receive_window=0)
    with pytest.raises(ValueError):
        ss.SpdySession(client=True, session_receive_window=10)
