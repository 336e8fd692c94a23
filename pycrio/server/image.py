"""ImageService handlers: validate, call the image core, translate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pycrio.api import api_pb2 as pb
from pycrio.errors import InvalidArgument
from pycrio.image.auth import AuthInput
from pycrio.image.cri import to_cri_image, verbose_info
from pycrio.server.paging import pages

if TYPE_CHECKING:
    from pycrio.core import Core
    from pycrio.image.service import ImageService


def _image_ref(spec: pb.ImageSpec, field: str = "image.image") -> str:
    if not spec.image:
        raise InvalidArgument(f"{field} is required")
    return spec.image


def _auth(auth: pb.AuthConfig) -> AuthInput | None:
    result = AuthInput(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        server_address=auth.server_address,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
    return None if result.empty() else result


class ImageServicer:
    """CRI ImageService."""

    def __init__(self, core: Core) -> None:
        self.images: ImageService = core.images

    def _list(self, flt: pb.ImageFilter | None) -> list[pb.Image]:
        ref = flt.image.image if flt is not None and flt.HasField("image") else ""
        return [to_cri_image(rec) for rec in self.images.list(ref or None)]

    async def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        flt = request.filter if request.HasField("filter") else None
        return pb.ListImagesResponse(images=self._list(flt))

    async def StreamImages(self, request: pb.StreamImagesRequest, context: Any) -> AsyncIterator[Any]:
        flt = request.filter if request.HasField("filter") else None
        for page in pages(self._list(flt)):
            yield pb.StreamImagesResponse(images=page)

    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> pb.ImageStatusResponse:
        rec = self.images.status(_image_ref(request.image))
        if rec is None:
            return pb.ImageStatusResponse()
        resp = pb.ImageStatusResponse(image=to_cri_image(rec))
        if request.verbose:
            resp.info.update(verbose_info(rec))
        return resp

    async def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        ref = _image_ref(request.image)
        remaining = context.time_remaining()
        deadline = asyncio.get_running_loop().time() + remaining if remaining is not None else None
        image_id = await self.images.pull(ref, _auth(request.auth), deadline=deadline)
        return pb.PullImageResponse(image_ref=image_id)

    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        await self.images.remove(_image_ref(request.image))
        return pb.RemoveImageResponse()

    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Any) -> pb.ImageFsInfoResponse:
        usage = await self.images.fs_info()
        image_fs = pb.FilesystemUsage(
            timestamp=usage.timestamp_ns,
            fs_id=pb.FilesystemIdentifier(mountpoint=usage.image_mountpoint),
            used_bytes=pb.UInt64Value(value=usage.image_bytes),
            inodes_used=pb.UInt64Value(value=usage.image_inodes),
        )
        resp = pb.ImageFsInfoResponse(image_filesystems=[image_fs])
        if usage.container_mountpoint:
            resp.container_filesystems.append(
                pb.FilesystemUsage(
                    timestamp=usage.timestamp_ns,
                    fs_id=pb.FilesystemIdentifier(mountpoint=usage.container_mountpoint),
                    used_bytes=pb.UInt64Value(value=usage.container_bytes),
                    inodes_used=pb.UInt64Value(value=usage.container_inodes),
                )
            )
        return resp
