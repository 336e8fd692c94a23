from __future__ import annotations

import asyncio

import pytest

from pycrio.errors import Unavailable
from pycrio.image import progress as prog
from pycrio.image.flight import Flights
from pycrio.image.transfer import ProgressWatch, Retryable, backoff_delay, error_from_response


async def test_shared_result_and_one_execution() -> None:
    flights: Flights[str, int] = Flights()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    callers = [asyncio.create_task(flights.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    assert flights.waiters("k") == 5
    gate.set()
    assert await asyncio.gather(*callers) == [42] * 5
    assert runs == 1
    await asyncio.sleep(0)
    assert "k" not in flights
    # A later call starts a new run.
    assert await flights.run("k", work) == 42
    assert runs == 2


async def test_error_shared() -> None:
    flights: Flights[str, int] = Flights()

    async def boom() -> int:
        await asyncio.sleep(0)
        raise Unavailable("down")

    results = await asyncio.gather(*(flights.run("k", boom) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)


async def test_cancel_one_waiter_keeps_the_work() -> None:
    flights: Flights[str, str] = Flights()
    gate = asyncio.Event()
    cancelled = False

    async def work() -> str:
        nonlocal cancelled
        try:
            await gate.wait()
            return "done"
        except asyncio.CancelledError:
            cancelled = True
            raise

    a = asyncio.create_task(flights.run("k", work))
    b = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert not cancelled
    gate.set()
    assert await b == "done"


async def test_last_waiter_cancel_stops_work_and_waits_for_cleanup() -> None:
    flights: Flights[str, str] = Flights()
    started = asyncio.Event()
    cleaned = False

    async def work() -> str:
        nonlocal cleaned
        started.set()
        try:
            await asyncio.sleep(3600)
            return "never"
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            cleaned = True

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await flights.run("k", work)
    # The cleanup has finished by the time the caller sees its timeout.
    assert started.is_set() and cleaned
    assert "k" not in flights


async def test_joiner_during_abandon_gets_a_fresh_run() -> None:
    flights: Flights[str, int] = Flights()
    runs = 0
    release_cleanup = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        mine = runs
        try:
            if mine == 1:
                await asyncio.sleep(3600)
            return mine
        finally:
            if mine == 1:
                await release_cleanup.wait()

    first = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)  # first is now waiting for the cleanup
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    release_cleanup.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == 2


async def test_tracker_subscribe() -> None:
    tracker = prog.PullTracker()
    seen: list[list[prog.PullProgress]] = []

    async def watch() -> None:
        async for snap in tracker.subscribe("reg.io/app:1", interval=0):
            seen.append(snap)

    sub = asyncio.create_task(watch())
    await asyncio.sleep(0.01)
    assert seen == [[]]  # waiting for the pull to appear
    p = tracker.start("app:1", ["reg.io/app:1"])
    p.layers = [prog.LayerProgress("sha256:a", 100), prog.LayerProgress("sha256:b", 50)]
    await asyncio.sleep(0.01)
    p.layers[0].done = 60
    p.layers[0].state = prog.DOWNLOADING
    p.layers[1].state = prog.EXISTS
    tracker.changed()
    await asyncio.sleep(0.01)
    assert seen[-1][0].done_bytes == 110 and seen[-1][0].total_bytes == 150
    tracker.finish(p, image_id="sha256:img")
    await asyncio.wait_for(sub, 2)
    assert seen[-1][0].state == prog.COMPLETE and seen[-1][0].image_id == "sha256:img"
    # Snapshots are copies.
    p.layers[0].done = 0
    assert seen[-1][0].layers[0].done == 60
    assert tracker.active() == []


async def test_tracker_failed_pull_and_trim() -> None:
    tracker = prog.PullTracker()
    for i in range(prog.KEEP_FINISHED + 10):
        tracker.finish(tracker.start(f"r{i}"), error="x" if i % 2 else "")
    assert len(tracker._pulls) <= prog.KEEP_FINISHED + 1
    p = tracker.start("bad")
    tracker.finish(p, error="boom")
    assert p.state == prog.ERROR and p.error == "boom"


async def test_watch_passes_healthy_and_fails_trickle() -> None:
    watch = ProgressWatch(0.2, 1000, "layer sha256:abc")

    async def fast() -> bytes:
        await asyncio.sleep(0.01)
        return b"x" * 100

    # 100 bytes per 10 ms is ~10 KB/s: never cut off, however long it runs.
    for _ in range(50):
        assert await watch.wait(fast) == b"x" * 100

    slow = ProgressWatch(0.1, 1000, "layer sha256:abc")

    async def trickle() -> bytes:
        await asyncio.sleep(0.02)
        return b"x"

    with pytest.raises(Unavailable, match=r"layer sha256:abc: transfer stalled"):
        for _ in range(100):
            await slow.wait(trickle)

    stuck = ProgressWatch(0.05, 1, "layer sha256:def")

    async def nothing() -> bytes:
        await asyncio.sleep(3600)
        return b""

    with pytest.raises(Unavailable, match="sha256:def"):
        await stuck.wait(nothing)


async def test_watch_ignores_consumer_time() -> None:
    watch = ProgressWatch(0.05, 100_000, "l")

    async def quick() -> bytes:
        return b"x" * 10_000

    # The consumer is slow (backpressure), the network is not: no stall.
    for _ in range(10):
        await watch.wait(quick)
        await asyncio.sleep(0.02)


async def test_watch_header_timeout_is_retryable() -> None:
    watch = ProgressWatch(0.05, 1, "l")

    async def hang() -> None:
        await asyncio.sleep(3600)

    with pytest.raises(Retryable):
        await watch.within(hang())  # type: ignore[arg-type]


def test_error_mapping() -> None:
    from pycrio.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated

    def err(status: int, code: str = "", had: bool = False) -> Exception:
        body = b'{"errors":[{"code":"%s","message":"msg"}]}' % code.encode() if code else b"oops"
        return error_from_response(status, body, "manifest reg.io/a:1", had_credentials=had)

    e = err(404, "MANIFEST_UNKNOWN")
    assert isinstance(e, NotFound) and "MANIFEST_UNKNOWN: msg" in str(e) and "reg.io/a:1" in str(e)
    assert isinstance(err(404, "NAME_UNKNOWN"), NotFound)
    assert isinstance(err(401, "UNAUTHORIZED"), Unauthenticated)
    assert "refused the credentials" in str(err(401, "UNAUTHORIZED", had=True))
    assert "no credentials" in str(err(401))
    assert isinstance(err(403, "DENIED"), PermissionDenied)
    assert isinstance(err(429, "TOOMANYREQUESTS"), Unavailable)
    assert isinstance(err(400, "MANIFEST_INVALID"), InvalidArgument)
    assert isinstance(err(418), Unavailable) and "HTTP 418: oops" in str(err(418))
    assert backoff_delay(0.5, 1) == 0.5 and backoff_delay(0.5, 3) == 2.0 and backoff_delay(0.5, 30) == 8.0
