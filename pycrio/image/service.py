"""ImageService: the core the CRI ImageService handlers call (no gRPC types here).

- :meth:`ImageService.pull` -> image id; honours a deadline (DeadlineExceeded,
  transfer stopped unless another pull shares it);
- :meth:`ImageService.list` / :meth:`ImageService.status` -> ImageRecord(s);
- :meth:`ImageService.remove` removes an image with all its names; unknown
  images are success, images used by a container are FailedPrecondition;
- :meth:`ImageService.fs_info` -> bytes and inodes of the image layers (and of
  container writable layers when a RootfsStore is given);
- :meth:`ImageService.load` imports an OCI layout or docker-archive tarball.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pycrio.config import ImageConfig
from pycrio.errors import DeadlineExceeded, InvalidArgument
from pycrio.image.auth import AuthInput
from pycrio.image.load import LoadedImage, Loader
from pycrio.image.progress import PullTracker
from pycrio.image.pull import Puller
from pycrio.image.records import find_image
from pycrio.image.reference import parse
from pycrio.image.registries import RegistriesLoader
from pycrio.image.registry import RegistryClient
from pycrio.storage.images import ImageRecord, ImageStore
from pycrio.storage.layers import LayerStore
from pycrio.storage.rootfs import FsUsage, RootfsStore

log = logging.getLogger("pycrio.image")


class ImageService:
    def __init__(
        self,
        settings: Callable[[], ImageConfig],
        layers: LayerStore,
        images: ImageStore,
        *,
        client: RegistryClient | None = None,
        tracker: PullTracker | None = None,
        registries: RegistriesLoader | None = None,
        rootfs: RootfsStore | None = None,
    ) -> None:
        self._settings = settings
        self.layers = layers
        self.images = images
        self.client = client or RegistryClient(settings)
        self.registries = registries or RegistriesLoader()
        self.puller = Puller(
            settings, layers, images, self.client, registries=self.registries,
            tracker=tracker or PullTracker(),
        )
        self.loader = Loader(layers, images)
        self.rootfs = rootfs

    @property
    def tracker(self) -> PullTracker:
        return self.puller.tracker

    async def close(self) -> None:
        await self.client.close()

    # -- RPC cores --------------------------------------------------------------------
    async def pull(self, ref: str, auth: AuthInput | None = None, *, deadline: float | None = None) -> str:
        """Pull ``ref`` and return its image id.

        ``deadline`` is the caller's deadline as an event-loop time
        (``loop.time() + context.time_remaining()``); past it the pull is
        stopped and DeadlineExceeded raised. A caller that cancels the task
        instead gets CancelledError once the transfer has stopped.
        """
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            raise DeadlineExceeded(f"pulling image {ref!r}: the deadline had already passed")
        try:
            async with asyncio.timeout_at(deadline):
                image_id = await self.puller.pull(ref, auth)
        except TimeoutError:
            raise DeadlineExceeded(f"pulling image {ref!r}: deadline exceeded; transfer stopped")
        self._pin_if_pause(ref, image_id)
        return image_id

    def list(self, filter_ref: str | None = None) -> builtins.list[ImageRecord]:
        """All images, or the one ``filter_ref`` names (empty list when none)."""
        if filter_ref:
            rec = self.status(filter_ref)
            return [rec] if rec is not None else []
        return self.images.list()

    def status(self, ref_or_id: str) -> ImageRecord | None:
        """The image ``ref_or_id`` names, or None (the CRI answers an empty status)."""
        regs = self.puller.registries_config()
        return find_image(self.images, ref_or_id, regs.search, regs.aliases)

    async def remove(self, ref_or_id: str) -> None:
        """Remove the image with all its tags and digests; unknown images are success."""
        rec = self.status(ref_or_id)
        if rec is None:
            return
        retired = self.images.remove(rec.id)  # FailedPrecondition while containers use it
        log.info("removed image %s (%s); %d layer(s) retired", rec.id, ", ".join(rec.repo_tags), len(retired))
        if retired:
            await self.layers.empty_trash()

    async def fs_info(self) -> FsUsage:
        """Usage of the image layers and (with a RootfsStore) of container writable layers."""
        if self.rootfs is not None:
            return await asyncio.to_thread(self.rootfs.fs_usage)
        used, inodes = self.layers.usage()
        return FsUsage(
            timestamp_ns=time.time_ns(),
            fs_id=os.stat(self.layers.root).st_dev,
            image_mountpoint=str(self.layers.overlay_dir),
            image_bytes=used,
            image_inodes=inodes,
            container_mountpoint="",
            container_bytes=0,
            container_inodes=0,
        )

    async def load(self, path: str | os.PathLike[str]) -> builtins.list[LoadedImage]:
        """Import an OCI layout or docker-archive tarball (``pycrioctl load``)."""
        return await self.loader.load(Path(path))

    # -- helpers ----------------------------------------------------------------------
    def _pin_if_pause(self, ref: str, image_id: str) -> None:
        """The configured pause image is pinned (the kubelet's GC leaves it alone)."""
        with contextlib.suppress(InvalidArgument):
            if str(parse(ref)) == str(parse(self._settings().pause_image)):
                self.images.set_pinned(image_id, True)
