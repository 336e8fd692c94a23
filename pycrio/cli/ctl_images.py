"""Image verbs: ``pull``, ``images``, ``inspecti``, ``rmi``, ``imagefsinfo`` and ``load``."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from typing import Any

import grpc

from pycrio.api import api_pb2 as pb
from pycrio.cli.client import Client
from pycrio.cli.ctl_common import (
    CtlError,
    add_output_flag,
    command,
    deadline,
    doing,
    duration_arg,
    go_map,
    human_size,
    load_pod_config,
    message_dict,
    output_documents,
    output_message,
    parse_labels,
    rpc_text,
    status_document,
    table,
    truncate_id,
)
from pycrio.cli.pullprogress import PlainRenderer, ProgressFollower, Renderer, TerminalRenderer
from pycrio.server import extra

FILTER_HELP = "filter: dangling=true|false, reference=REGEX, before=IMAGE, since=IMAGE (repeatable)"


def add_pull_flags(p: argparse.ArgumentParser) -> None:
    """Registry credentials and pull deadline, shared with ``create`` and ``run``."""
    p.add_argument(
        "--creds", default=os.environ.get("CRICTL_CREDS"), metavar="USERNAME[:PASSWORD]",
        help="credentials for the registry",
    )
    p.add_argument(
        "--auth", default=os.environ.get("CRICTL_AUTH"), metavar="AUTH_STRING",
        help="base64 of USERNAME[:PASSWORD] for the registry",
    )
    p.add_argument("-u", "--username", help="registry user; the password is asked for on the terminal")
    p.add_argument(
        "--pull-timeout", "--pt", type=duration_arg, default=0.0, metavar="DURATION",
        help="longest time a pull may take (e.g. 90s, 5m); 0 for none",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("pull", help="pull an image from a registry")
    p.add_argument("image", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("--pod-config", metavar="FILE", help="pod sandbox config (JSON or YAML) for the pull")
    p.add_argument("-a", "--annotation", action="append", help="annotation KEY=VALUE for the pull")
    add_pull_flags(p)
    p.set_defaults(func=pull)

    p = sub.add_parser("images", aliases=["image", "img"], help="list images")
    p.add_argument("repository", nargs="?", default="", metavar="REPOSITORY[:TAG]")
    p.add_argument("-v", "--verbose", action="store_true", help="show verbose info for images")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("-f", "--filter", action="append", default=[], help=FILTER_HELP)
    add_output_flag(p, "table", ("json", "yaml", "table"))
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="show output without truncating the ID")
    p.add_argument("--pinned", action="store_true", help="show whether the image is pinned")
    p.set_defaults(func=images)

    p = sub.add_parser("inspecti", help="show the status of one or more images")
    p.add_argument("ids", nargs="*", metavar="IMAGE-ID")
    add_output_flag(p, "json", ("json", "yaml", "table"))
    p.add_argument("-q", "--quiet", action="store_true", help="do not show verbose information")
    p.add_argument("--name", default="", help="filter by image name")
    p.add_argument("-f", "--filter", action="append", default=[], help=FILTER_HELP)
    p.set_defaults(func=inspecti)

    p = sub.add_parser("rmi", help="remove one or more images")
    p.add_argument("ids", nargs="*", metavar="IMAGE-ID")
    p.add_argument("-a", "--all", action="store_true", help="remove all images")
    p.add_argument("-q", "--prune", action="store_true", help="remove all unused images")
    p.set_defaults(func=rmi)

    p = sub.add_parser("imagefsinfo", help="show image filesystem info")
    add_output_flag(p, "json", ("json", "yaml", "table"))
    p.set_defaults(func=imagefsinfo)

    p = sub.add_parser("load", help="import images from an OCI layout or docker-archive tarball")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=load)


# ---------------------------------------------------------------- pull


def get_auth(args: argparse.Namespace) -> pb.AuthConfig | None:
    if args.username:
        password = getpass.getpass("Enter Password:")
        return pb.AuthConfig(username=args.username, password=password)
    if args.creds and args.auth:
        raise CtlError("both `--creds` and `--auth` are specified")
    if args.creds:
        user, sep, password = args.creds.partition(":")
        if sep and not user:
            raise CtlError("username can't be empty")
        return pb.AuthConfig(username=user, password=password)
    if args.auth:
        return pb.AuthConfig(auth=args.auth)
    return None


def pull_image(
    client: Client,
    image: str,
    *,
    auth: pb.AuthConfig | None,
    sandbox: pb.PodSandboxConfig | None = None,
    annotations: dict[str, str] | None = None,
    timeout: float = 0.0,
    renderer: Renderer | None = None,
) -> str:
    """PullImage (following its progress when a renderer is given); returns the image ref."""
    if timeout < 0:
        raise CtlError("timeout should be bigger than 0")
    req = pb.PullImageRequest(image=pb.ImageSpec(image=image, annotations=annotations or {}))
    if auth is not None:
        req.auth.CopyFrom(auth)
    if sandbox is not None:
        req.sandbox_config.CopyFrom(sandbox)
    follower = ProgressFollower(client.channel, image, renderer) if renderer is not None else None
    if follower is not None:
        follower.start()
    ok = False
    try:
        with doing("pulling image"):
            resp = client.image.PullImage(req, timeout=timeout or None)
        ok = True
    finally:
        if follower is not None:
            # After a success the stream ends by itself with the final snapshot; wait for it.
            follower.finish(wait=1.0 if ok else 0.2)
    ref: str = resp.image_ref
    return ref


@command
def pull(client: Client, args: argparse.Namespace) -> int:
    sandbox = load_pod_config(args.pod_config) if args.pod_config else None
    annotations = parse_labels(args.annotation)
    # A live display on a terminal; elsewhere plain lines on stderr, so stdout stays crictl's.
    renderer: Renderer
    if sys.stdout.isatty():
        renderer = TerminalRenderer(sys.stdout, args.image)
    else:
        renderer = PlainRenderer(sys.stderr, args.image)
    ref = pull_image(
        client, args.image, auth=get_auth(args), sandbox=sandbox, annotations=annotations,
        timeout=args.pull_timeout, renderer=renderer,
    )
    print(f"Image is up to date for {ref}")
    return 0


# ---------------------------------------------------------------- listing


def _repo_digest(img: pb.Image) -> tuple[str, str]:
    if not img.repo_digests:
        return "<none>", "<none>"
    parts = img.repo_digests[0].split("@")
    if len(parts) != 2:
        return "errorName", "errorRepoDigest"
    return parts[0], parts[1]


def _repo_tag_pairs(img: pb.Image, name: str) -> list[tuple[str, str]]:
    if not img.repo_tags:
        return [(name, "<none>")]
    pairs = []
    for tag in img.repo_tags:
        repo, sep, version = tag.rpartition(":")
        if not sep:
            pairs.append(("errorRepoTag", "errorRepoTag"))
            continue
        pairs.append((name if repo == "<none>" else repo, version))
    return pairs


def _sort_key(img: pb.Image) -> tuple[str, ...]:
    if img.repo_tags:
        return ("0", img.repo_tags[0])
    if img.repo_digests:
        return ("1", img.repo_digests[0])
    return ("2", img.id)


def _matches_image(img: pb.Image, value: str) -> bool:
    if "@" in value:
        return bool(img.repo_digests) and img.repo_digests[0].startswith(value)
    if ":" in value:
        name, _ = _repo_digest(img)
        return ":".join(_repo_tag_pairs(img, name)[0]) == value
    return img.id.removeprefix("sha256:").startswith(value.removeprefix("sha256:"))


def _until(imgs: list[pb.Image], value: str) -> list[pb.Image]:
    out = []
    for img in imgs:
        if _matches_image(img, value):
            break
        out.append(img)
    return out


def filter_images(imgs: list[pb.Image], filters: list[str]) -> list[pb.Image]:
    out = list(imgs)
    for flt in filters:
        key, sep, value = flt.partition("=")
        if not sep:
            raise CtlError(f"unknown filter flag: {flt}")
        if key == "dangling":
            if value not in ("true", "false"):
                raise CtlError(f"dangling filter takes true or false, not {value!r}")
            out = [i for i in out if (not i.repo_tags) == (value == "true")]
        elif key == "reference":
            try:
                regex = re.compile(value)
            except re.error as exc:
                raise CtlError(f"bad reference filter {value!r}: {exc}") from None
            out = [i for i in out if regex.search(_repo_digest(i)[0]) or _repo_digest(i)[0] == value]
        elif key == "before":
            out = list(reversed(_until(list(reversed(out)), value)))
        elif key == "since":
            out = _until(out, value)
        else:
            raise CtlError(f"unknown filter flag: {flt}")
    return out


def list_images(client: Client, args: argparse.Namespace, name: str, filters: list[str]) -> list[pb.Image]:
    req = pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=name)))
    with doing("listing images"):
        resp = client.image.ListImages(req, timeout=deadline(args))
    return filter_images(sorted(resp.images, key=_sort_key), filters)


@command
def images(client: Client, args: argparse.Namespace) -> int:
    imgs = list_images(client, args, args.repository, args.filter)
    if args.output != "table":
        output_message(pb.ListImagesResponse(images=imgs), args.output)
        return 0
    if args.quiet:
        for img in imgs:
            print(img.id)
        return 0
    if args.verbose:
        for img in imgs:
            _print_verbose(img)
        return 0
    header = ["IMAGE", "TAG"] + (["DIGEST"] if args.digests else []) + ["IMAGE ID", "SIZE"]
    rows = [header + (["PINNED"] if args.pinned else [])]
    for img in imgs:
        name, digest = _repo_digest(img)
        image_id = img.id
        if not args.no_trunc:
            image_id = truncate_id(image_id, "sha256:")
            digest = truncate_id(digest, "sha256:")
        size = human_size(img.size)
        for repo, tag in _repo_tag_pairs(img, name):
            row = [repo, tag] + ([digest] if args.digests else []) + [image_id, size]
            rows.append(row + ([str(img.pinned).lower()] if args.pinned else []))
    table(rows)
    return 0


def _print_verbose(img: pb.Image) -> None:
    print(f"ID: {img.id}")
    for tag in img.repo_tags:
        print(f"RepoTags: {tag}")
    for digest in img.repo_digests:
        print(f"RepoDigests: {digest}")
    if img.size:
        print(f"Size: {img.size}")
    if img.HasField("uid"):
        print(f"Uid: {img.uid.value}")
    if img.username:
        print(f"Username: {img.username}")
    if img.pinned:
        print("Pinned: true")
    print()


@command
def inspecti(client: Client, args: argparse.Namespace) -> int:
    ids = list(args.ids) or [i.id for i in list_images(client, args, args.name, args.filter)]
    if not ids:
        raise CtlError("no IDs provided or nothing found per filter")
    verbose = not args.quiet
    docs = []
    for image_id in ids:
        with doing(f"image status for {image_id!r} request"):
            resp = client.image.ImageStatus(
                pb.ImageStatusRequest(image=pb.ImageSpec(image=image_id), verbose=verbose),
                timeout=deadline(args),
            )
        if not resp.HasField("image") or not resp.image.id:
            raise CtlError(f"no such image {image_id!r} present")
        if args.output == "table":
            _print_image_status(resp, verbose)
        else:
            docs.append(status_document(message_dict(resp.image), dict(resp.info)))
    output_documents(docs, args.output)
    return 0


def _print_image_status(resp: pb.ImageStatusResponse, verbose: bool) -> None:
    print(f"ID: {resp.image.id}")
    for tag in resp.image.repo_tags:
        print(f"Tag: {tag}")
    for digest in resp.image.repo_digests:
        print(f"Digest: {digest}")
    print(f"Size: {human_size(resp.image.size)}")
    if verbose:
        print(f"Info: {go_map(dict(resp.info))}")


# ---------------------------------------------------------------- removal


def _in_use_ids(client: Client, args: argparse.Namespace) -> set[str]:
    with doing("listing containers"):
        ctrs = client.runtime.ListContainers(pb.ListContainersRequest(), timeout=deadline(args)).containers
    used = set()
    for ctr in ctrs:
        for ref in (ctr.image_id, ctr.image_ref, ctr.image.image):
            if not ref:
                continue
            try:
                resp = client.image.ImageStatus(
                    pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)), timeout=deadline(args)
                )
            except grpc.RpcError as exc:
                print(f"pycrioctl: image status for {ref!r}: {rpc_text(exc)}", file=sys.stderr)
                continue
            if resp.image.id:
                used.add(resp.image.id)
                break
    return used


@command
def rmi(client: Client, args: argparse.Namespace) -> int:
    ids: dict[str, bool] = dict.fromkeys(args.ids, True)
    if args.all or args.prune:
        with doing("listing images"):
            listed = client.image.ListImages(pb.ListImagesRequest(), timeout=deadline(args)).images
        for img in listed:
            if args.prune and img.pinned:
                continue
            ids[img.id] = True
    if args.prune:
        for used in _in_use_ids(client, args):
            if used in ids:
                ids[used] = False
    targets = [i for i, remove in ids.items() if remove]
    if not targets:
        if args.all or args.prune:
            print("No images to remove", file=sys.stderr)
            return 0
        raise CtlError("no image given (IMAGE-ID..., --all or --prune)")
    errors = []
    for image_id in targets:
        try:
            _remove_one(client, args, image_id)
        except CtlError as exc:
            errors.append(str(exc))
    for message in errors:
        print(f"pycrioctl: rmi: {message}", file=sys.stderr)
    return 1 if errors else 0


def _remove_one(client: Client, args: argparse.Namespace, image_id: str) -> None:
    with doing(f"image status request for {image_id!r} failed"):
        status = client.image.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=image_id)), timeout=deadline(args)
        )
    if not status.HasField("image") or not status.image.id:
        raise CtlError(f"no such image {image_id}")
    tags = list(status.image.repo_tags)
    if len(tags) > 1 and not image_id.startswith("sha256:") and (":" in image_id or "/" in image_id):
        print(f"pycrioctl: image {image_id!r} has {len(tags)} tags; all are removed:", file=sys.stderr)
        for tag in tags:
            print(f"  {tag}", file=sys.stderr)
    try:
        client.image.RemoveImage(
            pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)), timeout=deadline(args)
        )
    except grpc.RpcError as exc:
        if args.prune:
            return  # prune races with other users of the runtime: not an error
        raise CtlError(f"error of removing image {image_id!r}: {rpc_text(exc)}") from exc
    for name in tags or list(status.image.repo_digests):
        print(f"Deleted: {name}")


# ---------------------------------------------------------------- filesystems, import


@command
def imagefsinfo(client: Client, args: argparse.Namespace) -> int:
    with doing("image filesystem info request"):
        resp = client.image.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=deadline(args))
    if args.output != "table":
        output_documents([status_document(message_dict(resp))], args.output)
        return 0
    for label, filesystems in (("Container", resp.container_filesystems), ("Image", resp.image_filesystems)):
        print(f"{label} Filesystem ")
        for i, fs in enumerate(filesystems):
            print(f"TimeStamp[{i}]: {fs.timestamp}")
            print(f"Disk[{i}]: {human_size(fs.used_bytes.value, 4)}")
            print(f"Inodes[{i}]: {fs.inodes_used.value}")
            print(f"Mountpoint[{i}]: {fs.fs_id.mountpoint}")
    return 0


@command
def load(client: Client, args: argparse.Namespace) -> int:
    path = os.path.abspath(args.file)
    if not os.path.isfile(path):
        raise CtlError(f"{args.file}: no such file")
    # Importing can take as long as unpacking every layer: no deadline but the pull's.
    with doing(f"loading {args.file}"):
        result = extra.load_image(client.channel, path, timeout=None)
    for image in result.get("images") or []:
        tags = image.get("repo_tags") or []
        for tag in tags:
            print(f"Loaded image: {tag}")
        if not tags:
            print(f"Loaded image ID: {image.get('id', '')}")
    return 0
