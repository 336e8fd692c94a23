"""Container verbs: ``create``, ``start``, ``stop``, ``rm``, ``ps``, ``inspect``, ``update`` and ``run``."""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import grpc

from pycrio.api import api_pb2 as pb
from pycrio.cli import ctl_images, ctl_pods
from pycrio.cli.client import Client
from pycrio.cli.ctl_common import (
    POD_NAME_LABEL,
    POD_NAMESPACE_LABEL,
    CtlError,
    add_output_flag,
    age,
    command,
    compile_regex,
    deadline,
    doing,
    duration_arg,
    for_each_id,
    go_map,
    image_id_of,
    inspect_each,
    load_container_config,
    load_pod_config,
    matches,
    message_dict,
    output_message,
    parse_labels,
    print_labels,
    removal_targets,
    rfc3339nano,
    status_document,
    table,
    truncate_count,
    truncate_id,
)

CTR_STATES = {
    "created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING,
    "exited": pb.CONTAINER_EXITED, "unknown": pb.CONTAINER_UNKNOWN,
}
CTR_STATE_NAMES = {v: k.capitalize() for k, v in CTR_STATES.items()}
ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class ListOptions:
    """What ``ps``, ``inspect``, ``exec`` and ``stop -a`` select containers by."""

    id: str = ""
    pod: str = ""
    state: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    all: bool = False
    latest: bool = False
    last: int = 0
    name: str = ""
    namespace: str = ""
    image: str = ""


def add_filter_flags(p: argparse.ArgumentParser, *, state_short: bool = True) -> None:
    p.add_argument("--name", default="", help="filter by container name regular expression")
    p.add_argument("-p", "--pod", default="", help="filter by pod id")
    p.add_argument("--image", default="", help="filter by container image")
    state_flags = ("-s", "--state") if state_short else ("--state",)
    p.add_argument(*state_flags, default="", help="filter by state (created, running, exited, unknown)")
    p.add_argument("--label", action="append", default=[], help="filter by KEY=VALUE label (repeatable)")
    p.add_argument("-l", "--latest", action="store_true", help="the most recently created container")
    p.add_argument("-n", "--last", type=int, default=0, help="the last N created containers (0: all)")


def add_create_flags(p: argparse.ArgumentParser, run: bool) -> None:
    p.add_argument("--no-pull", action="store_true", help="do not pull the image")
    p.add_argument("--with-pull", action="store_true", help="pull the image even if it is present")
    p.add_argument(
        "-T", "--cancel-timeout", type=duration_arg, default=0.0, metavar="DURATION",
        help="give up on the request after this long",
    )
    ctl_images.add_pull_flags(p)
    if run:
        p.add_argument("-r", "--runtime", default="", help="runtime handler to use (e.g. runc, crun)")


def register(sub: Any) -> None:
    p = sub.add_parser("create", help="create a new container")
    p.add_argument("pod", metavar="POD")
    p.add_argument("config", metavar="container-config.[json|yaml]")
    p.add_argument("pod_config", metavar="pod-config.[json|yaml]")
    add_create_flags(p, run=False)
    p.set_defaults(func=create)

    p = sub.add_parser("start", help="start one or more created containers")
    p.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    p.set_defaults(func=start)

    p = sub.add_parser("stop", help="stop one or more running containers")
    p.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    p.add_argument(
        "-t", "--timeout", dest="stop_timeout", type=int, default=0,
        help="seconds to wait before killing the container",
    )
    p.add_argument("-a", "--all", action="store_true", help="stop all running containers")
    p.set_defaults(func=stop)

    p = sub.add_parser("rm", help="remove one or more containers")
    p.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    p.add_argument("-f", "--force", action="store_true", help="stop the container first if it is running")
    p.add_argument("-k", "--keep-logs", action="store_true", help="keep the log file and its rotations")
    p.add_argument("-a", "--all", action="store_true", help="remove all containers")
    p.set_defaults(func=rm)

    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-v", "--verbose", action="store_true", help="show verbose information")
    p.add_argument("--id", default="", help="filter by container id")
    add_filter_flags(p)
    p.add_argument("--namespace", default="", help="filter by pod namespace regular expression")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    add_output_flag(p, "table", ("json", "yaml", "table"))
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("--no-trunc", action="store_true", help="show output without truncating the ID")
    p.add_argument("-r", "--resolve-image-path", action="store_true", help="show image name, not id")
    p.set_defaults(func=ps)

    p = sub.add_parser("inspect", help="show the status of one or more containers")
    p.add_argument("ids", nargs="*", metavar="CONTAINER-ID")
    add_output_flag(p, "json", ("json", "yaml", "table"))
    p.add_argument("-q", "--quiet", action="store_true", help="do not show verbose information")
    add_filter_flags(p)
    p.add_argument("--namespace", default="", help="filter by pod namespace regular expression")
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running ones")
    p.set_defaults(func=inspect)

    p = sub.add_parser("update", help="update the resources of one or more running containers")
    p.add_argument("ids", nargs="+", metavar="CONTAINER-ID")
    p.add_argument("--cpu-period", type=int, default=0, help="CPU CFS period (usecs)")
    p.add_argument("--cpu-quota", type=int, default=0, help="CPU CFS quota (usecs per period)")
    p.add_argument("--cpu-share", type=int, default=0, help="CPU shares (relative weight)")
    p.add_argument("--memory", type=int, default=0, help="memory limit (bytes)")
    p.add_argument("--cpuset-cpus", default="", help="CPUs to use")
    p.add_argument("--cpuset-mems", default="", help="memory nodes to use")
    p.add_argument("--oom-score-adj", type=int, default=0, help="OOM killer score adjustment")
    p.set_defaults(func=update)

    p = sub.add_parser("run", help="run a new container in a new pod")
    p.add_argument("config", metavar="container-config.[json|yaml]")
    p.add_argument("pod_config", metavar="pod-config.[json|yaml]")
    add_create_flags(p, run=True)
    p.set_defaults(func=run)


# ---------------------------------------------------------------- create / run


def create_container(
    client: Client,
    args: argparse.Namespace,
    pod_id: str,
    cfg: pb.ContainerConfig,
    pod_cfg: pb.PodSandboxConfig | None,
    pull: str,
) -> str:
    """CreateContainer; ``pull`` is "always", "missing" or "never" for the images it needs."""
    if not cfg.image.user_specified_image:
        cfg.image.user_specified_image = cfg.image.image
    if pull != "never":
        wanted = [cfg.image.image] + [m.image.image for m in cfg.mounts if m.image.image]
        auth = ctl_images.get_auth(args)
        for image in wanted:
            if pull == "missing" and image_id_of(client, args, image) is not None:
                continue
            ctl_images.pull_image(
                client, image, auth=auth, sandbox=pod_cfg,
                annotations=dict(cfg.image.annotations), timeout=args.pull_timeout,
            )
    req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg)
    if pod_cfg is not None:
        req.sandbox_config.CopyFrom(pod_cfg)
    with doing("creating container"):
        timeout = args.cancel_timeout or deadline(args, args.timeout)
        resp = client.runtime.CreateContainer(req, timeout=timeout)
    cid: str = resp.container_id
    return cid


def _pull_mode(args: argparse.Namespace, default: str) -> str:
    if args.no_pull and args.with_pull:
        raise CtlError("conflict: no-pull and with-pull are both set")
    return "never" if args.no_pull else "always" if args.with_pull else default


@command
def create(client: Client, args: argparse.Namespace) -> int:
    mode = _pull_mode(args, "never")
    cfg = load_container_config(args.config)
    pod_cfg = load_pod_config(args.pod_config)
    print(create_container(client, args, args.pod, cfg, pod_cfg, mode))
    return 0


def start_container(client: Client, args: argparse.Namespace, cid: str) -> None:
    with doing(f"starting the container {cid!r}"):
        client.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=deadline(args))


@command
def run(client: Client, args: argparse.Namespace) -> int:
    mode = _pull_mode(args, "missing")
    cfg = load_container_config(args.config)
    pod_cfg = load_pod_config(args.pod_config)
    pod_id = ctl_pods.run_pod(client, args, pod_cfg, args.runtime)
    try:
        cid = create_container(client, args, pod_id, cfg, pod_cfg, mode)
        start_container(client, args, cid)
    except BaseException:
        # Leave nothing half made behind: the pod was made by this command.
        with contextlib.suppress(grpc.RpcError):
            client.runtime.StopPodSandbox(
                pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=deadline(args, args.timeout)
            )
            client.runtime.RemovePodSandbox(
                pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=deadline(args, args.timeout)
            )
        raise
    print(cid)
    return 0


# ---------------------------------------------------------------- start / stop / rm / update


def container_status(client: Client, args: argparse.Namespace, cid: str, verbose: bool = False) -> Any:
    with doing(f"getting container status {cid!r}"):
        return client.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=cid, verbose=verbose), timeout=deadline(args)
        )


def stop_container(client: Client, args: argparse.Namespace, cid: str, timeout: int) -> None:
    with doing(f"stopping the container {cid!r}"):
        client.runtime.StopContainer(
            pb.StopContainerRequest(container_id=cid, timeout=timeout), timeout=deadline(args, timeout)
        )


@command
def start(client: Client, args: argparse.Namespace) -> int:
    for cid in args.ids:
        start_container(client, args, cid)
        print(cid)
    return 0


@command
def stop(client: Client, args: argparse.Namespace) -> int:
    if args.all and args.ids:
        raise CtlError("cannot specify CONTAINER-ID(s) when using --all")
    if args.all:
        ids = [c.id for c in list_containers(client, args, ListOptions(state="running"))]
        if not ids:
            print("No running containers found.")
            return 0
    elif not args.ids:
        raise CtlError("you must specify at least one CONTAINER-ID or use --all")
    else:
        ids = list(args.ids)
    for cid in ids:
        # StopContainer is idempotent in CRI; an id nobody knows is reported here instead.
        container_status(client, args, cid)
        stop_container(client, args, cid, args.stop_timeout)
        print(cid)
    return 0


def _remove_logs(path: str) -> None:
    for name in [*glob.glob(glob.escape(path) + ".*"), path]:
        try:
            os.remove(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            print(f"pycrioctl: removing log file {name}: {exc.strerror}", file=sys.stderr)


@command
def rm(client: Client, args: argparse.Namespace) -> int:
    def list_all() -> list[str]:
        resp = client.runtime.ListContainers(pb.ListContainersRequest(), timeout=deadline(args))
        return [c.id for c in resp.containers]

    def remove(cid: str) -> None:
        status = container_status(client, args, cid).status
        if status.state == pb.CONTAINER_RUNNING:
            if not args.force:
                raise CtlError(f"container {cid!r} is running, please stop it first")
            stop_container(client, args, cid, 0)
        with doing(f"removing container {cid!r}"):
            client.runtime.RemoveContainer(
                pb.RemoveContainerRequest(container_id=cid), timeout=deadline(args, args.timeout)
            )
        print(cid)
        if not args.keep_logs and status.log_path:
            _remove_logs(status.log_path)

    return for_each_id("rm", removal_targets(args, list_all, "container", "CONTAINER-ID"), remove)


@command
def update(client: Client, args: argparse.Namespace) -> int:
    # Every field is sent, zeros included, as crictl does (zero: "not specified").
    resources = pb.LinuxContainerResources(
        cpu_period=args.cpu_period, cpu_quota=args.cpu_quota, cpu_shares=args.cpu_share,
        memory_limit_in_bytes=args.memory, cpuset_cpus=args.cpuset_cpus, cpuset_mems=args.cpuset_mems,
        oom_score_adj=args.oom_score_adj,
    )
    for cid in args.ids:
        with doing(f"updating container resources for {cid!r}"):
            client.runtime.UpdateContainerResources(
                pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources), timeout=deadline(args)
            )
        print(cid)
    return 0


# ---------------------------------------------------------------- listing and status


def list_options(args: argparse.Namespace) -> ListOptions:
    return ListOptions(
        id=getattr(args, "id", ""), pod=args.pod, state=args.state, labels=parse_labels(args.label),
        all=getattr(args, "all", False), latest=args.latest, last=args.last, name=args.name,
        namespace=getattr(args, "namespace", ""), image=args.image,
    )


def list_containers(client: Client, args: argparse.Namespace, opts: ListOptions) -> list[pb.Container]:
    flt = pb.ContainerFilter(id=opts.id, pod_sandbox_id=opts.pod, label_selector=opts.labels)
    if opts.state:
        state = CTR_STATES.get(opts.state.lower())
        if state is None:
            raise CtlError("--state should be one of created, running, exited or unknown")
        flt.state.state = state
    elif not opts.all:
        flt.state.state = pb.CONTAINER_RUNNING
    if opts.latest or opts.last > 0:
        flt.ClearField("state")  # latest/last look at every state
    name_re, ns_re = compile_regex(opts.name), compile_regex(opts.namespace)
    with doing("listing containers"):
        req = pb.ListContainersRequest(filter=flt)
        ctrs = client.runtime.ListContainers(req, timeout=deadline(args)).containers
    wanted_image = image_id_of(client, args, opts.image) if opts.image else None
    found = []
    for c in ctrs:
        if opts.image and (wanted_image is None or image_id_of(client, args, c.image.image) != wanted_image):
            continue
        if matches(name_re, c.metadata.name) and matches(ns_re, c.labels.get(POD_NAMESPACE_LABEL, "unknown")):
            found.append(c)
    found.sort(key=lambda c: c.created_at, reverse=True)
    return found[: truncate_count(len(found), opts.latest, opts.last)]


def _display_image(client: Client, args: argparse.Namespace, c: pb.Container) -> str:
    image = c.image.image
    if not args.no_trunc:
        algo, sep, hexpart = image.partition(":")
        if sep and algo == "sha256" and len(hexpart) == 64:
            image = truncate_id(image, "sha256:")
    if args.resolve_image_path:
        with doing(f"image status for {image!r}"):
            resp = client.image.ImageStatus(
                pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=deadline(args)
            )
        if resp.image.repo_tags:
            image = resp.image.repo_tags[0]
    return image


@command
def ps(client: Client, args: argparse.Namespace) -> int:
    found = list_containers(client, args, list_options(args))
    if args.output != "table":
        output_message(pb.ListContainersResponse(containers=found), args.output)
        return 0
    if args.quiet:
        for c in found:
            print(c.id)
        return 0
    rows = [["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE"]]
    for c in found:
        namespace = c.labels.get(POD_NAMESPACE_LABEL, "unknown")
        state = CTR_STATE_NAMES.get(c.state, "Unknown")
        if args.verbose:
            _print_container_verbose(c, namespace, state)
            continue
        rows.append([
            c.id if args.no_trunc else truncate_id(c.id),
            _display_image(client, args, c),
            age(c.created_at),
            state,
            c.metadata.name,
            str(c.metadata.attempt),
            c.pod_sandbox_id if args.no_trunc else truncate_id(c.pod_sandbox_id),
            c.labels.get(POD_NAME_LABEL, "unknown"),
            namespace,
        ])
    if not args.verbose:
        table(rows)
    return 0


def _print_container_verbose(c: pb.Container, namespace: str, state: str) -> None:
    print(f"ID: {c.id}")
    print(f"PodID: {c.pod_sandbox_id}")
    print(f"Namespace: {namespace}")
    if c.metadata.name:
        print(f"Name: {c.metadata.name}")
    print(f"Attempt: {c.metadata.attempt}")
    print(f"State: {state}")
    print(f"Image: {c.image.image}")
    print(f"Created: {age(c.created_at)}")
    print_labels("Labels", dict(c.labels))
    print_labels("Annotations", dict(c.annotations))
    print()


def container_status_dict(st: pb.ContainerStatus) -> dict[str, Any]:
    """The status as crictl shows it: timestamps as text, unset messages as null."""
    data = message_dict(st, nulls=True)
    data["createdAt"] = rfc3339nano(st.created_at)
    started = st.state != pb.CONTAINER_CREATED
    finished = st.state == pb.CONTAINER_EXITED or (st.state == pb.CONTAINER_UNKNOWN and st.finished_at > 0)
    data["startedAt"] = rfc3339nano(st.started_at) if started else ZERO_TIME
    data["finishedAt"] = rfc3339nano(st.finished_at) if finished else ZERO_TIME
    return data


@command
def inspect(client: Client, args: argparse.Namespace) -> int:
    ids = list(args.ids) or [c.id for c in list_containers(client, args, list_options(args))]
    verbose = not args.quiet
    return inspect_each(
        ids,
        lambda cid: container_status(client, args, cid, verbose),
        lambda resp: status_document(container_status_dict(resp.status), dict(resp.info)),
        lambda resp: _print_container_status(resp, verbose),
        args.output,
    )


def _print_container_status(resp: pb.ContainerStatusResponse, verbose: bool) -> None:
    st = resp.status
    print(f"ID: {st.id}")
    if st.metadata.name:
        print(f"Name: {st.metadata.name}")
    if st.metadata.attempt:
        print(f"Attempt: {st.metadata.attempt}")
    print(f"State: {pb.ContainerState.Name(st.state)}")
    print(f"Created: {age(st.created_at)}")
    if st.state != pb.CONTAINER_CREATED:
        print(f"Started: {age(st.started_at)}")
    if st.state == pb.CONTAINER_EXITED:
        if st.finished_at > 0:
            print(f"Finished: {age(st.finished_at)}")
        print(f"Exit Code: {st.exit_code}")
    print_labels("Labels", dict(st.labels))
    print_labels("Annotations", dict(st.annotations))
    if verbose:
        print(f"Info: {go_map(dict(resp.info))}")
