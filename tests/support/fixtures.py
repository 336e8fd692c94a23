"""pytest fixtures for registries and test images.

Import them into a conftest with ``from tests.support.fixtures import *  # noqa: F403``
(or list ``tests.support.fixtures`` in a root-level ``pytest_plugins``).

Registries are session-scoped: tests must use unique repository names (``unique_repo``).
Pushed images live in the plain ``registry`` under ``pycrio-test/<name>``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images as img
from tests.support.fakeregistry import FakeRegistry
from tests.support.regclient import PushedImage
from tests.support.regclient import push_pushed as push
from tests.support.registry import Pki, Registry, make_pki, start_registry
from tests.support.tokenserver import TokenPolicy

__all__ = [
    "PushedImage",
    "big_image",
    "busybox_image",
    "fake_registry",
    "httpd_like_image",
    "image_cache_dir",
    "many_files_image",
    "many_layers_image",
    "multiarch_image",
    "nginx_like_image",
    "nonewprivs_image",
    "pause_image",
    "registry",
    "registry_pki",
    "tls_registry",
    "token_registry",
    "unique_repo",
    "web_image",
    "whiteout_image",
    "zstd_image",
]


# ---------------------------------------------------------------------------- registries


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test CA (``ca_cert``), server cert for 127.0.0.1/localhost, token signer."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Plain-HTTP docker-registry on 127.0.0.1 (no auth)."""
    reg = start_registry(tmp_path_factory.mktemp("registry-plain"), "plain")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, registry_pki: Pki) -> Iterator[Registry]:
    """HTTPS (CA at ``.ca_file``) + htpasswd Basic auth; credentials ``.username``/``.password``."""
    users = {"pycrio": secrets.token_hex(8)}
    reg = start_registry(tmp_path_factory.mktemp("registry-tls"), "tls", pki=registry_pki, users=users)
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, registry_pki: Pki) -> Iterator[Registry]:
    """HTTPS + bearer-token auth; ``.token_server`` records requests.

    Users: ``pycrio`` (``.username``/``.password``) may do anything; ``reader``
    (password in ``.users["reader"]``) may only pull; anonymous callers get nothing.
    """
    users = {"pycrio": secrets.token_hex(8), "reader": secrets.token_hex(8)}
    policy = TokenPolicy(
        users=users,
        grants={"pycrio": {"*": frozenset({"*"})}, "reader": {"*": frozenset({"pull"})}},
    )
    reg = start_registry(
        tmp_path_factory.mktemp("registry-token"), "token", pki=registry_pki, token_policy=policy
    )
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    """A programmable HTTP fake for artefacts a real registry refuses to store."""
    fake = FakeRegistry().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test run, e.g. ``t/test-pull-abc123``."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-") or "t"
    return f"t/{base}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------- images


@pytest.fixture(scope="session")
def image_cache_dir() -> Path:
    """Where big generated images are cached ($PYCRIO_TEST_IMAGE_CACHE or /var/tmp/...)."""
    return img.default_cache_dir()


@pytest.fixture(scope="session")
def busybox_image(registry: Registry) -> PushedImage:
    """busybox (Cmd ["sh"]) in ``registry`` as pycrio-test/busybox:latest."""
    return push(registry, "pycrio-test/busybox", "latest", img.busybox_image())


@pytest.fixture(scope="session")
def web_image(registry: Registry) -> PushedImage:
    """busybox httpd on port 80 serving ``images.WEB_PAGE``."""
    return push(registry, "pycrio-test/web", "latest", img.web_image())


@pytest.fixture(scope="session")
def nginx_like_image(registry: Registry) -> PushedImage:
    """nginx stand-in: process named nginx, /var/run/nginx.pid, HTTP on 80."""
    return push(registry, "pycrio-test/nginx", "latest", img.nginx_like_image())


@pytest.fixture(scope="session")
def httpd_like_image(registry: Registry) -> PushedImage:
    return push(registry, "pycrio-test/httpd", "latest", img.httpd_like_image())


@pytest.fixture(scope="session")
def multiarch_image(registry: Registry) -> PushedImage:
    """OCI index over ``images.MULTIARCH_PLATFORMS`` (only linux/amd64 runs)."""
    return push(registry, "pycrio-test/multiarch", "latest", img.multiarch_index())


@pytest.fixture(scope="session")
def zstd_image(registry: Registry) -> PushedImage:
    return push(registry, "pycrio-test/zstd", "latest", img.zstd_image())


@pytest.fixture(scope="session")
def whiteout_image(registry: Registry) -> PushedImage:
    """Whiteouts and an opaque dir across layers; expected view in ``images.WHITEOUT_EXPECTED``."""
    return push(registry, "pycrio-test/whiteout", "latest", img.whiteout_image())


@pytest.fixture(scope="session")
def many_layers_image(registry: Registry) -> PushedImage:
    """120 layers."""
    return push(registry, "pycrio-test/layers120", "latest", img.many_layers_image())


@pytest.fixture(scope="session")
def pause_image(registry: Registry) -> PushedImage:
    """catatonit -P as a pause image."""
    return push(registry, "pycrio-test/pause", "latest", img.pause_image())


@pytest.fixture(scope="session")
def nonewprivs_image(registry: Registry) -> PushedImage:
    """Entrypoint: setuid-root program printing "Effective uid: N"."""
    return push(registry, "pycrio-test/nonewprivs", "latest", img.nonewprivs_image())


@pytest.fixture(scope="session")
def many_files_image(registry: Registry, image_cache_dir: Path) -> PushedImage:
    """20,000 small files (built once into the cache dir)."""
    return push(registry, "pycrio-test/files20k", "latest", img.many_files_image(image_cache_dir))


@pytest.fixture(scope="session")
def big_image(registry: Registry, image_cache_dir: Path) -> PushedImage:
    """~100 MB in 5 layers (built once into the cache dir)."""
    return push(registry, "pycrio-test/big", "latest", img.big_image(image_cache_dir))
