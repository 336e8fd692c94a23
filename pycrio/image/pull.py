"""The pull orchestrator: reference -> manifest -> config -> layers -> image record.

- Resolution: short names expand to the search registries (or an alias);
  each candidate is tried on its mirrors, then its upstream, until one has
  the manifest. The most telling error wins when none does.
- An index picks this host's platform; the config is verified and its
  diff_ids give the layers' chain ids. Layers already stored are skipped.
- Layers download in parallel (``max_parallel_downloads`` per image), each
  streamed straight into a LayerWriter, so unpacking runs while the other
  layers still download; each layer is committed as soon as it is complete
  (overlay layers are independent directories).
- Single flight: concurrent pulls of the same image (and credentials)
  share one task, and concurrent pulls needing the same layer share its
  download. A cancelled pull stops its transfer unless another pull still
  waits on it; staged layers are aborted either way.
- A failed pull writes no image record. Layers it committed before the
  failure stay (unreferenced, collected later), so a retry resumes there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pycrio.config import ImageConfig
from pycrio.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PycrioError,
    Unauthenticated,
    Unavailable,
)
from pycrio.image import progress as prog
from pycrio.image.auth import AuthInput, credentials_for, from_request
from pycrio.image.flight import Flights
from pycrio.image.manifest import (
    Descriptor,
    ImageManifest,
    ManifestError,
    for_this_platform,
    parse_config,
    parse_manifest,
    verify_bytes,
)
from pycrio.image.records import save_image
from pycrio.image.reference import Reference, candidates
from pycrio.image.registries import RegistriesConfig, RegistriesLoader
from pycrio.image.registry import RegistryClient, Repository
from pycrio.storage.images import ImageStore
from pycrio.storage.layers import LayerInfo, LayerStore, chain_ids

log = logging.getLogger("pycrio.image.pull")

# Which failure explains a failed resolution best, most telling first.
_ERROR_RANK: tuple[type[PycrioError], ...] = (
    InvalidArgument,  # integrity and format errors (ManifestError is one)
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    NotFound,
)


@dataclass(frozen=True)
class Resolved:
    """Where an image was found and what its manifest says."""

    logical: Reference  # the name the image is recorded under
    repo: Repository
    manifest: ImageManifest
    top_digest: str  # digest of what the reference points at (index or manifest)


def best_error(errors: Sequence[PycrioError], what: str) -> PycrioError:
    """One error summing up several failed attempts, of the most telling class."""
    if not errors:
        return NotFound(f"{what}: no registry to try")
    if len(errors) == 1:
        return errors[0]
    detail = "; ".join(str(e) for e in errors)
    for cls in _ERROR_RANK:
        if any(isinstance(e, cls) for e in errors):
            return cls(f"{what}: {detail}")
    return type(errors[0])(f"{what}: {detail}")


def _with_context(exc: PycrioError, what: str) -> PycrioError:
    """The same kind of error (its pycrio.errors class), with ``what`` in front."""
    for cls in type(exc).__mro__:
        if cls.__module__ == PycrioError.__module__ and issubclass(cls, PycrioError):
            return cls(f"{what}: {exc}")
    return PycrioError(f"{what}: {exc}")


class Puller:
    """Pulls images into the layer and image stores."""

    def __init__(
        self,
        settings: Callable[[], ImageConfig],
        layers: LayerStore,
        images: ImageStore,
        client: RegistryClient,
        *,
        registries: RegistriesLoader | None = None,
        tracker: prog.PullTracker | None = None,
    ) -> None:
        self._settings = settings
        self.layers = layers
        self.images = images
        self.client = client
        self.registries = registries or RegistriesLoader()
        self.tracker = tracker or prog.PullTracker()
        self._image_flights: Flights[tuple[str, ...], str] = Flights()
        self._layer_flights: Flights[str, LayerInfo] = Flights()
        self._layer_progress: dict[str, prog.LayerProgress] = {}

    def registries_config(self) -> RegistriesConfig:
        cfg = self._settings()
        return self.registries.get(cfg.registries_conf, cfg.registries_conf_dir)

    # -- entry point --------------------------------------------------------------
    async def pull(self, text: str, auth: AuthInput | None = None) -> str:
        """Pull ``text``; returns the image id (``sha256:<config digest>``)."""
        regs = self.registries_config()
        cands = candidates(text, regs.search, regs.aliases)
        fp = from_request(auth).fingerprint() if auth is not None and not auth.empty() else ""
        key = (*[str(c) for c in cands], fp)
        return await self._image_flights.run(key, lambda: self._pull(text, cands, regs, auth))

    async def _pull(
        self, text: str, cands: list[Reference], regs: RegistriesConfig, auth: AuthInput | None
    ) -> str:
        p = self.tracker.start(text, [str(c) for c in cands])
        try:
            resolved = await self._resolve(text, cands, regs, auth)
            p.state = prog.PULLING
            self.tracker.changed()
            image_id = await self._fetch(resolved, p)
        except BaseException as exc:
            self.tracker.finish(p, error=str(exc) or type(exc).__name__)
            raise
        self.tracker.finish(p, image_id=image_id)
        return image_id

    # -- resolution ---------------------------------------------------------------
    async def _resolve(
        self, text: str, cands: list[Reference], regs: RegistriesConfig, auth: AuthInput | None
    ) -> Resolved:
        cfg = self._settings()
        errors: list[PycrioError] = []
        for ref in cands:
            try:
                sources = regs.sources(ref)
            except PermissionDenied as exc:
                errors.append(exc)
                continue
            for src in sources:
                creds = credentials_for(auth, src.ref.domain, src.ref.path, cfg.auth_file)
                repo = self.client.repository(src, creds)
                try:
                    manifest, top = await self._manifest(repo, src.ref)
                except PycrioError as exc:
                    log.debug("pull %s: %s failed: %s", text, src, exc)
                    errors.append(exc)
                    continue
                return Resolved(ref, repo, manifest, top)
        raise best_error(errors, f"pulling image {text!r}")

    async def _manifest(self, repo: Repository, ref: Reference) -> tuple[ImageManifest, str]:
        where = str(ref)
        body, ctype, digest, header_digest = await repo.manifest(ref.tag_or_digest)
        if ref.digest is not None:
            verify_bytes(body, ref.digest, None, f"manifest of {where}")
            digest = ref.digest
        parsed = parse_manifest(body, ctype, digest, where)
        if ref.digest is None and header_digest.startswith("sha256:") and header_digest != digest:
            raise ManifestError(
                f"manifest of {where}: the registry says its digest is {header_digest}, "
                f"the content's is {digest}"
            )

        async def entry(desc: Descriptor) -> tuple[bytes, str]:
            entry_body, entry_type, _, _ = await repo.manifest(desc.digest)
            return entry_body, entry_type

        return await for_this_platform(parsed, where, entry), digest

    # -- transfer -----------------------------------------------------------------
    async def _fetch(self, r: Resolved, p: prog.PullProgress) -> str:
        where = str(r.logical)
        m = r.manifest
        config_bytes = await r.repo.blob_bytes(m.config, f"config {m.config.digest} of {where}")
        config, diff_ids = parse_config(config_bytes, m.config.digest, where, len(m.layers))
        chains = chain_ids(diff_ids)
        p.layers = [self._progress_for(chains[i], d.digest, d.size) for i, d in enumerate(m.layers)]
        self.tracker.changed()
        limit = asyncio.Semaphore(max(self._settings().max_parallel_downloads, 1))
        # Held layers survive garbage collection until the record references them.
        with self.layers.hold(chains):
            tasks = [
                asyncio.create_task(self._layer(r.repo, m, i, diff_ids[i], chains, limit, p.layers[i], where))
                for i in range(len(m.layers))
            ]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            ref = r.logical
            save_image(
                self.images,
                image_id=m.config.digest,
                chains=chains,
                config=config,
                manifest_digest=m.digest,
                # The ImageStore convention (and containerd's): compressed bytes.
                size=sum(d.size for d in m.layers),
                tags=[ref.tagged() or ""] if ref.digest is None else [],
                digests=[ref.digested(r.top_digest) or ""],
            )
        return m.config.digest

    def _progress_for(self, chain: str, digest: str, size: int) -> prog.LayerProgress:
        """The progress of a layer: the one of a download in flight, else a fresh one."""
        return self._layer_progress.get(chain) or prog.LayerProgress(digest, size)

    async def _layer(
        self,
        repo: Repository,
        m: ImageManifest,
        i: int,
        diff_id: str,
        chains: list[str],
        limit: asyncio.Semaphore,
        lp: prog.LayerProgress,
        where: str,
    ) -> LayerInfo:
        chain = chains[i]
        info = self.layers.get(chain)
        if info is not None:
            if lp.state == prog.WAITING:
                lp.state = prog.EXISTS
            return info
        parent = chains[i - 1] if i else None
        info = await self._layer_flights.run(
            chain, lambda: self._download(repo, m, i, diff_id, chain, parent, limit, lp, where)
        )
        # A download shared with another pull reported into that pull's progress object.
        if lp.state not in (prog.DONE, prog.EXISTS):
            lp.state, lp.done = prog.DONE, lp.total
        return info

    async def _download(
        self,
        repo: Repository,
        m: ImageManifest,
        i: int,
        diff_id: str,
        chain: str,
        parent: str | None,
        limit: asyncio.Semaphore,
        lp: prog.LayerProgress,
        where: str,
    ) -> LayerInfo:
        desc = m.layers[i]
        what = f"layer {i + 1}/{len(m.layers)} ({desc.digest}) of {where}"
        self._layer_progress[chain] = lp  # pulls joining this download show the same bytes
        try:
            async with limit:
                # Another pull may have committed it while this one waited for a slot.
                info = self.layers.get(chain)
                if info is not None:
                    lp.state = prog.EXISTS
                    return info
                lp.state = prog.DOWNLOADING
                self.tracker.changed()
                writer = self.layers.begin(chain, parent, desc.media_type, desc.digest, diff_id)
                try:

                    async def sink(chunk: bytes) -> None:
                        await writer.feed(chunk)
                        lp.done += len(chunk)
                        self.tracker.changed()

                    # The writer checks the blob digest (and the diff_id) while it unpacks.
                    await repo.fetch_blob(desc, sink, what, verify=False)
                    lp.state = prog.UNPACKING
                    self.tracker.changed()
                    info = await writer.commit()
                except BaseException:
                    # Abort even while being cancelled: staging must not outlive the pull.
                    await asyncio.shield(writer.abort())
                    raise
            lp.state = prog.DONE
            return info
        except PycrioError as exc:
            lp.state = prog.FAILED
            raise exc if where in str(exc) else _with_context(exc, what) from exc
        except BaseException:
            lp.state = prog.FAILED
            raise
        finally:
            self.tracker.changed()
            self._layer_progress.pop(chain, None)
