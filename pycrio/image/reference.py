"""Docker image references: parsing, normalisation and short-name candidates.

A reference is ``[domain[:port]/]path[:tag][@digest]``. Normalised, the
domain is always present (``docker.io`` when none is given, with the
``library/`` namespace for one-component Docker Hub names) and a reference
with neither tag nor digest gets ``:latest``.

A name whose first component is not a domain (no ``.`` or ``:`` in it and
not ``localhost``) is *unqualified*: :func:`candidates` expands it with the
unqualified-search registries of registries.conf, in order, falling back
to ``docker.io``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pycrio.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
# The longest name (domain and path) a registry accepts.
NAME_MAX = 255

# One path component: lowercase alphanumerics joined by '.', '_', '__' or dashes.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# A DNS label, dotted hostnames, or a bracketed IPv6 address; then an optional port.
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX64_RE = re.compile(r"[a-f0-9]{64}")
# Digest algorithms and the exact length of their hex encoding.
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path``: the repository, without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def tag_or_digest(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def tagged(self) -> str | None:
        """``name:tag``, or None for a reference with no tag."""
        return f"{self.name}:{self.tag}" if self.tag is not None else None

    def digested(self, digest: str | None = None) -> str | None:
        """``name@digest`` with the reference's own digest or the one given."""
        d = digest or self.digest
        return f"{self.name}@{d}" if d else None

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``algorithm:hex`` with a known algorithm and length."""
    if not _DIGEST_RE.fullmatch(digest):
        raise InvalidArgument(f"invalid digest {digest!r}")
    algo, _, hexpart = digest.partition(":")
    want = _DIGEST_LENGTHS.get(algo)
    if want is None:
        raise InvalidArgument(f"unsupported digest algorithm {algo!r} in {digest!r}")
    if len(hexpart) != want or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise InvalidArgument(f"invalid {algo} digest {digest!r}: want {want} lowercase hex digits")
    return digest


def _looks_like_domain(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def _split(text: str) -> tuple[str | None, str, str | None, str | None]:
    """Split ``text`` into (domain or None, path, tag, digest), checking the syntax."""
    if not text:
        raise InvalidArgument("image reference is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidArgument(f"invalid image reference {text!r}: contains whitespace")
    rest, at, digest = text.partition("@")
    if at:
        validate_digest(digest)
    else:
        digest = ""
    # A tag follows the last ':' after the last '/' (a ':' before it is a port).
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag: str | None = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidArgument(f"invalid tag {tag!r} in image reference {text!r}")
    domain: str | None = None
    first, sep, remainder = rest.partition("/")
    if sep and _looks_like_domain(first):
        if not _DOMAIN_RE.fullmatch(first):
            raise InvalidArgument(f"invalid registry host {first!r} in image reference {text!r}")
        domain, rest = first, remainder
    if not rest:
        raise InvalidArgument(f"invalid image reference {text!r}: no repository name")
    if rest != rest.lower():
        raise InvalidArgument(f"invalid image reference {text!r}: repository name must be lowercase")
    if not _PATH_RE.fullmatch(rest):
        raise InvalidArgument(f"invalid repository name {rest!r} in image reference {text!r}")
    full = f"{domain}/{rest}" if domain else rest
    if len(full) > NAME_MAX:
        raise InvalidArgument(f"image reference {text[:40]!r}... is longer than {NAME_MAX} characters")
    return domain, rest, tag, digest or None


def _docker_hub_path(path: str) -> str:
    return path if "/" in path else f"library/{path}"


def parse(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference; unqualified names go to docker.io.

    With ``default_tag``, a reference with neither tag nor digest gets
    ``:latest``. Malformed references raise InvalidArgument.
    """
    if _HEX64_RE.fullmatch(text):
        raise InvalidArgument(f"invalid image reference {text!r}: a 64-hex-digit image id is not a name")
    domain, path, tag, digest = _split(text)
    if domain is None or domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB:
        path = _docker_hub_path(path)
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def candidates(
    text: str,
    search_registries: Sequence[str] = (),
    aliases: dict[str, str] | None = None,
) -> list[Reference]:
    """The references to try for ``text``, most preferred first.

    A fully qualified name gives itself. A short name gives its alias when
    one is configured (tag/digest carried over), else one reference per
    search registry, or docker.io when the list is empty.
    """
    if _HEX64_RE.fullmatch(text):
        raise InvalidArgument(f"invalid image reference {text!r}: a 64-hex-digit image id is not a name")
    domain, path, tag, digest = _split(text)
    if domain is not None:
        return [parse(text)]
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    if aliases and path in aliases:
        target = parse(aliases[path], default_tag=False)
        return [Reference(target.domain, target.path, tag, digest)]
    out: list[Reference] = []
    for registry in list(search_registries) or [DOCKER_HUB]:
        host = DOCKER_HUB if registry == "index.docker.io" else registry
        if not _DOMAIN_RE.fullmatch(host):
            raise InvalidArgument(f"invalid unqualified-search registry {registry!r}")
        p = _docker_hub_path(path) if host == DOCKER_HUB else path
        ref = Reference(host, p, tag, digest)
        if ref not in out:
            out.append(ref)
    return out


def is_image_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` or bare 64 hex digits."""
    return bool(_HEX64_RE.fullmatch(text.removeprefix("sha256:")))
