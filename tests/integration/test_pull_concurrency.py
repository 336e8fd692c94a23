"""Single flight, cancellation and deadlines, counted through the fault proxy."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pycrio.errors import DeadlineExceeded
from pycrio.image import progress as prog
from tests.integration.test_image_faults import FaultProxy
from tests.integration.test_pull_registry import PullEnv, close_env, make_env
from tests.support import images as img
from tests.support.oci import File, Image, build_image, build_layer
from tests.support.regclient import PushedImage, push_pushed
from tests.support.registry import Registry


@pytest.fixture()
async def via_proxy(tmp_path: Path, registry: Registry) -> AsyncIterator[Callable[..., object]]:
    """make(**proxy options) -> (env, proxy, host): an env whose registry sits behind a FaultProxy."""
    made: list[tuple[PullEnv, FaultProxy]] = []

    async def make(**kw: object) -> tuple[PullEnv, FaultProxy, str]:
        proxy = FaultProxy(registry.url, **kw)  # type: ignore[arg-type]
        host = await proxy.start()
        env = await make_env(tmp_path / f"env{len(made)}")
        env.insecure(host)
        made.append((env, proxy))
        return env, proxy, host

    try:
        yield make
    finally:
        for env, proxy in made:
            await close_env(env)
            await proxy.stop()


@pytest.fixture(scope="module")
def slow_image(registry: Registry) -> PushedImage:
    """One ~2 MB incompressible layer: slow to trickle through the proxy."""
    data = random.Random("pycrio-slow").randbytes(2 << 20)
    return push_pushed(registry, "t/slow", "1", build_image([build_layer([File("blob", data)], level=1)]))


def image_of(p: PushedImage) -> Image:
    assert isinstance(p.image, Image)
    return p.image


async def test_identical_pulls_share_one_transfer(
    via_proxy: Callable[..., object], busybox_image: PushedImage
) -> None:
    env, proxy, host = await via_proxy()  # type: ignore[misc]
    ref = f"{host}/{busybox_image.repo}:latest"
    ids = await asyncio.gather(*(env.service.pull(ref) for _ in range(5)))
    assert len(set(ids)) == 1
    layer = image_of(busybox_image).layers[0]
    assert len(proxy.blob_gets(layer.digest)) == 1
    assert len([s for s in proxy.seen if "/manifests/" in s.path]) == 1


async def test_different_images_share_a_layer_download(
    via_proxy: Callable[..., object], busybox_image: PushedImage, web_image: PushedImage
) -> None:
    env, proxy, host = await via_proxy()  # type: ignore[misc]
    base = img.busybox_layer()
    assert image_of(web_image).layers[0].digest == base.digest
    a, b = await asyncio.gather(
        env.service.pull(f"{host}/{busybox_image.repo}:latest"),
        env.service.pull(f"{host}/{web_image.repo}:latest"),
    )
    assert a != b
    assert len(proxy.blob_gets(base.digest)) == 1
    assert len(env.layers.list()) == 2


async def wait_downloading(env: PullEnv, at_least: int = 1) -> None:
    """Until some layer of some pull has received ``at_least`` bytes (bounded)."""
    for _ in range(500):
        for p in env.service.tracker.active():
            if any(x.state == prog.DOWNLOADING and x.done >= at_least for x in p.layers):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("no download started")


async def test_cancel_stops_transfer_and_leaves_nothing(
    via_proxy: Callable[..., object], slow_image: PushedImage
) -> None:
    env, proxy, host = await via_proxy(trickle=0.01, trickle_bytes=4096)  # type: ignore[misc]
    task = asyncio.create_task(env.service.pull(f"{host}/t/slow:1"))
    await wait_downloading(env, 8192)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancellation returned after cleanup: nothing staged, stored or recorded.
    assert env.nothing_stored()
    assert env.service.tracker.active() == []
    assert len(proxy.blob_gets(image_of(slow_image).layers[0].digest)) == 1


async def test_deadline_exceeded(via_proxy: Callable[..., object], slow_image: PushedImage) -> None:
    env, _, host = await via_proxy(trickle=0.01, trickle_bytes=4096)  # type: ignore[misc]
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await env.service.pull(f"{host}/t/slow:1", deadline=loop.time() + 0.3)
    assert loop.time() - start < 3
    assert env.nothing_stored()
    with pytest.raises(DeadlineExceeded, match="already passed"):
        await env.service.pull(f"{host}/t/slow:1", deadline=loop.time() - 1)
    # A tiny deadline (critest uses 1 ms) fails the same way, leaving nothing.
    with pytest.raises(DeadlineExceeded):
        await env.service.pull(f"{host}/t/slow:1", deadline=loop.time() + 0.001)
    assert env.nothing_stored()


async def test_cancelling_one_of_two_sharers_keeps_the_transfer(
    via_proxy: Callable[..., object], slow_image: PushedImage
) -> None:
    env, proxy, host = await via_proxy(trickle=0.002, trickle_bytes=16384)  # type: ignore[misc]
    ref = f"{host}/t/slow:1"
    first = asyncio.create_task(env.service.pull(ref))
    second = asyncio.create_task(env.service.pull(ref))
    await wait_downloading(env)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 30) == image_of(slow_image).config.digest
    assert len(proxy.blob_gets(image_of(slow_image).layers[0].digest)) == 1
    assert env.staging_empty()


async def test_progress_reports_bytes(via_proxy: Callable[..., object], slow_image: PushedImage) -> None:
    env, _, host = await via_proxy(trickle=0.001, trickle_bytes=65536)  # type: ignore[misc]
    ref = f"{host}/t/slow:1"
    snaps: list[list[prog.PullProgress]] = []

    async def watch() -> None:
        async for snap in env.service.tracker.subscribe(ref, interval=0.01):
            snaps.append(snap)

    sub = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await env.service.pull(ref)
    await asyncio.wait_for(sub, 5)
    total = image_of(slow_image).layers[0].size
    partial = [s[0].layers[0].done for s in snaps if s and s[0].layers and 0 < s[0].layers[0].done < total]
    assert partial, "no intermediate progress seen"
    assert partial == sorted(partial)
    final = snaps[-1][0]
    assert final.state == prog.COMPLETE and final.done_bytes == final.total_bytes == total
