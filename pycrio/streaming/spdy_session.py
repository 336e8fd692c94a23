"""Sans-IO SPDY/3.1 session: stream states and flow-control windows.

Feed received bytes to :meth:`SpdySession.receive_data` and get :class:`Event` objects back;
call the ``send_*``/``open_stream``/``reply`` methods and ship :meth:`data_to_send` to the peer.

Flow control (SPDY/3.1): every stream and the session start with a 64 KiB window in each
direction; DATA payload consumes it and WINDOW_UPDATE (stream id 0 = session) returns it;
SETTINGS_INITIAL_WINDOW_SIZE changes the initial stream window (and shifts open streams).

Kubernetes' spdystream (the kubelet, crictl, kubectl) announces "SPDY/3.1" but implements
no flow control: it never sends WINDOW_UPDATE and ignores ours.  Holding it to a 64 KiB window
would stall every exec after 64 KiB, so by default the send side enforces windows only once
the peer has shown it speaks flow control (it sent SETTINGS or WINDOW_UPDATE); windows are
tracked all along, so enforcement starts from the right numbers.  We always *send*
WINDOW_UPDATE for data the application consumed, which strict peers need and legacy ones ignore.
On the receive side a flow-controlling peer that overruns a window gets FLOW_CONTROL_ERROR;
a legacy peer is never checked (the asyncio layer slows it down through TCP instead).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pycrio.streaming.spdy import (
    DEFAULT_WINDOW,
    MAX_FRAME_LENGTH,
    MAX_STREAM_ID,
    MAX_WINDOW,
    DataFrame,
    FrameReader,
    FrameWriter,
    GoAway,
    GoAwayStatus,
    Headers,
    HeadersFrame,
    Ping,
    RstStatus,
    RstStream,
    SettingId,
    Settings,
    SpdyError,
    SynReply,
    SynStream,
    UnknownControl,
    WindowUpdate,
    data_frame_header,
)


class FlowControlError(ValueError):
    """The caller tried to send more DATA than the peer's window allows."""


class StreamClosedError(ValueError):
    """The stream is unknown, reset, or already closed in this direction."""


# ---------------------------------------------------------------- events


@dataclass(slots=True)
class StreamOpened:
    stream_id: int
    headers: Headers
    fin: bool
    unidirectional: bool
    associated_id: int


@dataclass(slots=True)
class ReplyReceived:
    stream_id: int
    headers: Headers
    fin: bool


@dataclass(slots=True)
class HeadersReceived:
    stream_id: int
    headers: Headers
    fin: bool


@dataclass(slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    fin: bool


@dataclass(slots=True)
class StreamReset:
    stream_id: int
    status: int


@dataclass(slots=True)
class PingReceived:
    """The peer pinged us; the echo has already been queued."""

    ping_id: int


@dataclass(slots=True)
class PingAcknowledged:
    ping_id: int


@dataclass(slots=True)
class GoAwayReceived:
    last_good_stream_id: int
    status: int


@dataclass(slots=True)
class SettingsChanged:
    settings: dict[int, int]


@dataclass(slots=True)
class WindowOpened:
    """Our send window grew (stream_id 0: the session window)."""

    stream_id: int


Event = (
    StreamOpened
    | ReplyReceived
    | HeadersReceived
    | DataReceived
    | StreamReset
    | PingReceived
    | PingAcknowledged
    | GoAwayReceived
    | SettingsChanged
    | WindowOpened
)


class _Stream:
    __slots__ = ("local_closed", "recv_pending", "recv_window", "remote_closed", "send_window", "stream_id")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.local_closed = False
        self.remote_closed = False
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_pending = 0


class SpdySession:
    def __init__(
        self,
        *,
        client: bool,
        receive_window: int = DEFAULT_WINDOW,
        session_receive_window: int = DEFAULT_WINDOW,
        flow_control: bool | None = None,
        enforce_receive_window: bool = True,
        window_updates: bool = True,
    ) -> None:
        if not 1 <= receive_window <= MAX_WINDOW:
            raise ValueError("receive window out of range")
        if not DEFAULT_WINDOW <= session_receive_window <= MAX_WINDOW:
            raise ValueError("receive window out of range")
        self.client = client
        self._reader = FrameReader()
        self._writer = FrameWriter()
        self._out: list[bytes | memoryview] = []
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self.last_peer_stream_id = 0
        self._recently_reset: deque[int] = deque(maxlen=64)
        # Send side (the peer's receive windows).
        self._peer_initial_window = DEFAULT_WINDOW
        self._session_send_window = DEFAULT_WINDOW
        # Receive side (what we grant).
        self._recv_initial = receive_window
        self._session_recv_target = session_receive_window
        self._session_recv_window = DEFAULT_WINDOW
        self._session_recv_pending = 0
        self._forced = flow_control
        # A peer that speaks flow control and still overruns a window gets the stream reset
        # (FLOW_CONTROL_ERROR).  Legacy peers are never checked: for them the asyncio layer
        # pauses reading instead, which would deadlock against a peer waiting for our
        # WINDOW_UPDATE frames, hence the strictness for the others.
        self._enforce_receive = enforce_receive_window
        # False imitates spdystream (never sends WINDOW_UPDATE); for tests.
        self._window_updates = window_updates
        self.peer_flow_control = False
        self.goaway_sent = False
        self.goaway_received = False
        self._next_ping = 1 if client else 2

    # ------------------------------------------------------------ state

    @property
    def flow_control_active(self) -> bool:
        return self.peer_flow_control if self._forced is None else self._forced

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int | None:
        """Bytes we may send now on the stream, or None when flow control is not in force."""
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamClosedError(f"stream {stream_id} is not open")
        if not self.flow_control_active:
            return None
        return max(0, min(st.send_window, self._session_send_window))

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def pending_output(self) -> list[bytes | memoryview]:
        """Like :meth:`data_to_send` but without joining (for writelines)."""
        out = self._out
        self._out = []
        return out

    # ------------------------------------------------------------ sending

    def initiate(self) -> None:
        """Announce our receive windows when they differ from the SPDY defaults."""
        if self._recv_initial != DEFAULT_WINDOW:
            self._send_frame(Settings([(0, SettingId.INITIAL_WINDOW_SIZE, self._recv_initial)]))
        grow = self._session_recv_target - self._session_recv_window
        if grow > 0:
            self._session_recv_window += grow
            self._send_frame(WindowUpdate(0, grow))

    def open_stream(self, headers: Headers, *, fin: bool = False, priority: int = 0) -> int:
        if self.goaway_received or self.goaway_sent:
            raise StreamClosedError("session is going away")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise StreamClosedError("stream ids exhausted")
        self._next_id += 2
        st = _Stream(stream_id, self._peer_initial_window, self._recv_initial)
        st.local_closed = fin
        self._streams[stream_id] = st
        self._send_frame(SynStream(stream_id, headers, 1 if fin else 0, 0, priority))
        return stream_id

    def reply(self, stream_id: int, headers: Headers | None = None, *, fin: bool = False) -> None:
        st = self._open_for_send(stream_id)
        self._send_frame(SynReply(stream_id, headers or {}, 1 if fin else 0))
        if fin:
            self._close_local(st)

    def send_headers(self, stream_id: int, headers: Headers, *, fin: bool = False) -> None:
        st = self._open_for_send(stream_id)
        self._send_frame(HeadersFrame(stream_id, headers, 1 if fin else 0))
        if fin:
            self._close_local(st)

    def send_data(self, stream_id: int, data: bytes | memoryview, *, fin: bool = False) -> None:
        st = self._open_for_send(stream_id)
        n = len(data)
        if n > MAX_FRAME_LENGTH:
            raise ValueError("DATA payload larger than a frame can carry")
        if n and self.flow_control_active and n > min(st.send_window, self._session_send_window):
            raise FlowControlError(f"{n} bytes exceed the send window of stream {stream_id}")
        st.send_window -= n
        self._session_send_window -= n
        self._out.append(data_frame_header(stream_id, n, fin))
        if n:
            self._out.append(data)
        if fin:
            self._close_local(st)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (an empty DATA frame with FIN); no-op when already done."""
        st = self._streams.get(stream_id)
        if st is not None and not st.local_closed:
            self.send_data(stream_id, b"", fin=True)

    def reset_stream(self, stream_id: int, status: int = RstStatus.CANCEL) -> None:
        st = self._streams.pop(stream_id, None)
        if st is not None:
            self._recently_reset.append(stream_id)
            self._send_frame(RstStream(stream_id, status))

    def acknowledge(self, stream_id: int, n: int) -> None:
        """The application consumed n received bytes: return window (batched at half a window)."""
        if n <= 0 or not self._window_updates:
            return
        st = self._streams.get(stream_id)
        if st is not None and not st.remote_closed:
            st.recv_pending += n
            if st.recv_pending >= self._recv_initial // 2:
                st.recv_window += st.recv_pending
                self._send_frame(WindowUpdate(stream_id, st.recv_pending))
                st.recv_pending = 0
        self._ack_session(n)

    def ping(self) -> int:
        ping_id = self._next_ping
        self._next_ping = (self._next_ping + 2) & 0xFFFFFFFF or (1 if self.client else 2)
        self._send_frame(Ping(ping_id))
        return ping_id

    def goaway(self, status: int = GoAwayStatus.OK) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            self._send_frame(GoAway(self.last_peer_stream_id, status))

    def send_settings(self, entries: list[tuple[int, int, int]]) -> None:
        self._send_frame(Settings(entries))

    def _send_frame(
        self, frame: SynStream | SynReply | HeadersFrame | RstStream | Settings | Ping | GoAway | WindowUpdate
    ) -> None:
        self._out.append(self._writer.serialize(frame))

    def _open_for_send(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            raise StreamClosedError(f"stream {stream_id} is not open for sending")
        return st

    def _close_local(self, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            self._streams.pop(st.stream_id, None)

    def _close_remote(self, st: _Stream) -> None:
        st.remote_closed = True
        if st.local_closed:
            self._streams.pop(st.stream_id, None)

    def _ack_session(self, n: int) -> None:
        self._session_recv_pending += n
        if self._session_recv_pending >= self._session_recv_target // 2:
            self._session_recv_window += self._session_recv_pending
            self._send_frame(WindowUpdate(0, self._session_recv_pending))
            self._session_recv_pending = 0

    # ------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        try:
            frames = self._reader.feed(data)
        except SpdyError:
            self.goaway(GoAwayStatus.PROTOCOL_ERROR)
            raise
        events: list[Event] = []
        for frame in frames:
            if isinstance(frame, DataFrame):
                self._on_data(frame, events)
            elif isinstance(frame, SynStream):
                self._on_syn_stream(frame, events)
            elif isinstance(frame, SynReply | HeadersFrame):
                st = self._streams.get(frame.stream_id)
                if st is None or st.remote_closed:
                    continue
                if isinstance(frame, SynReply):
                    events.append(ReplyReceived(frame.stream_id, frame.headers, frame.fin))
                else:
                    events.append(HeadersReceived(frame.stream_id, frame.headers, frame.fin))
                if frame.fin:
                    self._close_remote(st)
            elif isinstance(frame, RstStream):
                if self._streams.pop(frame.stream_id, None) is not None:
                    events.append(StreamReset(frame.stream_id, frame.status))
            elif isinstance(frame, Settings):
                self._on_settings(frame, events)
            elif isinstance(frame, WindowUpdate):
                self._on_window_update(frame, events)
            elif isinstance(frame, Ping):
                if (frame.ping_id & 1) == (0 if self.client else 1):
                    self._send_frame(Ping(frame.ping_id))
                    events.append(PingReceived(frame.ping_id))
                else:
                    events.append(PingAcknowledged(frame.ping_id))
            elif isinstance(frame, GoAway):
                self.goaway_received = True
                events.append(GoAwayReceived(frame.last_good_stream_id, frame.status))
            elif isinstance(frame, UnknownControl):
                continue
        return events

    def _on_data(self, frame: DataFrame, events: list[Event]) -> None:
        n = len(frame.data)
        self._session_recv_window -= n
        st = self._streams.get(frame.stream_id)
        if st is None or st.remote_closed:
            # Late data for a stream we reset or closed: ignore but keep the session window moving.
            self._ack_session(n)
            if st is None and frame.stream_id not in self._recently_reset and n:
                self._recently_reset.append(frame.stream_id)
                self._send_frame(RstStream(frame.stream_id, RstStatus.INVALID_STREAM))
            return
        st.recv_window -= n
        if self._enforce_receive and self.flow_control_active and st.recv_window < 0:
            self.reset_stream(frame.stream_id, RstStatus.FLOW_CONTROL_ERROR)
            events.append(StreamReset(frame.stream_id, RstStatus.FLOW_CONTROL_ERROR))
            return
        events.append(DataReceived(frame.stream_id, frame.data, frame.fin))
        if frame.fin:
            self._close_remote(st)

    def _on_syn_stream(self, frame: SynStream, events: list[Event]) -> None:
        sid = frame.stream_id
        peer_parity = 0 if self.client else 1
        if (sid & 1) != peer_parity or sid <= self.last_peer_stream_id:
            self._send_frame(RstStream(sid, RstStatus.PROTOCOL_ERROR))
            return
        self.last_peer_stream_id = sid
        if self.goaway_sent:
            self._send_frame(RstStream(sid, RstStatus.REFUSED_STREAM))
            return
        st = _Stream(sid, self._peer_initial_window, self._recv_initial)
        st.remote_closed = frame.fin
        st.local_closed = bool(frame.flags & 0x02)
        self._streams[sid] = st
        events.append(StreamOpened(sid, frame.headers, frame.fin, st.local_closed, frame.associated_id))

    def _on_settings(self, frame: Settings, events: list[Event]) -> None:
        self.peer_flow_control = True
        values = frame.as_dict()
        new_initial = values.get(SettingId.INITIAL_WINDOW_SIZE)
        if new_initial is not None and 0 <= new_initial <= MAX_WINDOW:
            delta = new_initial - self._peer_initial_window
            self._peer_initial_window = new_initial
            for st in self._streams.values():
                st.send_window += delta
            if delta > 0:
                events.extend(WindowOpened(sid) for sid in self._streams)
        events.append(SettingsChanged(values))

    def _on_window_update(self, frame: WindowUpdate, events: list[Event]) -> None:
        self.peer_flow_control = True
        if frame.delta == 0:
            return
        if frame.stream_id == 0:
            self._session_send_window = min(self._session_send_window + frame.delta, MAX_WINDOW)
            events.append(WindowOpened(0))
            return
        st = self._streams.get(frame.stream_id)
        if st is None:
            return
        st.send_window += frame.delta
        if st.send_window > MAX_WINDOW:
            self.reset_stream(frame.stream_id, RstStatus.FLOW_CONTROL_ERROR)
            events.append(StreamReset(frame.stream_id, RstStatus.FLOW_CONTROL_ERROR))
            return
        events.append(WindowOpened(frame.stream_id))
