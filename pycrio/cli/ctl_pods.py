"""Pod sandbox verbs: ``runp``, ``stopp``, ``rmp``, ``pods`` and ``inspectp``."""

from __future__ import annotations

import argparse
from typing import Any

from pycrio.api import api_pb2 as pb
from pycrio.cli.client import Client
from pycrio.cli.ctl_common import (
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
    go_time,
    inspect_each,
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

POD_STATES = {"ready": pb.SANDBOX_READY, "notready": pb.SANDBOX_NOTREADY}
POD_STATE_NAMES = {pb.SANDBOX_READY: "Ready", pb.SANDBOX_NOTREADY: "NotReady"}


def _add_list_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="", help="filter by pod name regular expression")
    p.add_argument("--namespace", default="", help="filter by pod namespace regular expression")
    p.add_argument("-s", "--state", default="", help="filter by pod state (ready, notready)")
    p.add_argument("--label", action="append", default=[], help="filter by KEY=VALUE label (repeatable)")
    p.add_argument("-l", "--latest", action="store_true", help="show the most recently created pod")
    p.add_argument("-n", "--last", type=int, default=0, help="show the last N created pods (0: all)")


def register(sub: Any) -> None:
    p = sub.add_parser("runp", help="run a new pod")
    p.add_argument("config", metavar="pod-config.[json|yaml]")
    p.add_argument("-r", "--runtime", default="", help="runtime handler to use (e.g. runc, crun)")
    p.add_argument(
        "-T", "--cancel-timeout", type=duration_arg, default=0.0, metavar="DURATION",
        help="give up on the request after this long",
    )
    p.set_defaults(func=runp)

    p = sub.add_parser("stopp", help="stop one or more running pods")
    p.add_argument("ids", nargs="+", metavar="POD-ID")
    p.set_defaults(func=stopp)

    p = sub.add_parser("rmp", help="remove one or more pods")
    p.add_argument("ids", nargs="*", metavar="POD-ID")
    p.add_argument("-f", "--force", action="store_true", help="stop the pod first if it is running")
    p.add_argument("-a", "--all", action="store_true", help="remove all pods")
    p.set_defaults(func=rmp)

    p = sub.add_parser("pods", help="list pods")
    p.add_argument("--id", default="", help="filter by pod id")
    _add_list_filters(p)
    p.add_argument("-v", "--verbose", action="store_true", help="show verbose info for pods")
    p.add_argument("-q", "--quiet", action="store_true", help="list only pod IDs")
    add_output_flag(p, "table", ("json", "yaml", "table"))
    p.add_argument("--no-trunc", action="store_true", help="show output without truncating the ID")
    p.set_defaults(func=pods)

    p = sub.add_parser("inspectp", help="show the status of one or more pods")
    p.add_argument("ids", nargs="*", metavar="POD-ID")
    add_output_flag(p, "json", ("json", "yaml", "table"))
    p.add_argument("-q", "--quiet", action="store_true", help="do not show verbose information")
    _add_list_filters(p)
    p.set_defaults(func=inspectp)


# ---------------------------------------------------------------- lifecycle


def run_pod(client: Client, args: argparse.Namespace, cfg: pb.PodSandboxConfig, runtime: str) -> str:
    # Pod start includes namespaces and CNI: allow twice the usual deadline, as crictl does.
    timeout = args.cancel_timeout or deadline(args, args.timeout)
    with doing("run pod sandbox"):
        resp = client.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=cfg, runtime_handler=runtime), timeout=timeout
        )
    pod_id: str = resp.pod_sandbox_id
    return pod_id


@command
def runp(client: Client, args: argparse.Namespace) -> int:
    cfg = load_pod_config(args.config)
    print(run_pod(client, args, cfg, args.runtime))
    return 0


def pod_status(client: Client, args: argparse.Namespace, pod_id: str, verbose: bool = False) -> Any:
    with doing(f"getting sandbox status of pod {pod_id!r}"):
        return client.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose), timeout=deadline(args)
        )


def stop_pod(client: Client, args: argparse.Namespace, pod_id: str) -> None:
    with doing(f"stopping the pod sandbox {pod_id!r}"):
        client.runtime.StopPodSandbox(
            pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=deadline(args, args.timeout)
        )
    print(f"Stopped sandbox {pod_id}")


def remove_pod(client: Client, args: argparse.Namespace, pod_id: str) -> None:
    with doing(f"removing the pod sandbox {pod_id!r}"):
        client.runtime.RemovePodSandbox(
            pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=deadline(args, args.timeout)
        )
    print(f"Removed sandbox {pod_id}")


@command
def stopp(client: Client, args: argparse.Namespace) -> int:
    for pod_id in args.ids:
        # Stop is idempotent in CRI (an unknown id "succeeds"); a person typing an id wants to know.
        pod_status(client, args, pod_id)
        stop_pod(client, args, pod_id)
    return 0


@command
def rmp(client: Client, args: argparse.Namespace) -> int:
    def list_all() -> list[str]:
        resp = client.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=deadline(args))
        return [p.id for p in resp.items]

    def remove(pod_id: str) -> None:
        status = pod_status(client, args, pod_id)
        if status.status.state == pb.SANDBOX_READY:
            if not args.force:
                raise CtlError(f"pod sandbox {pod_id!r} is running, please stop it first")
            stop_pod(client, args, pod_id)
        remove_pod(client, args, pod_id)

    return for_each_id("rmp", removal_targets(args, list_all, "pod", "POD-ID"), remove)


# ---------------------------------------------------------------- listing and status


def list_pods(client: Client, args: argparse.Namespace, pod_id: str = "") -> list[pb.PodSandbox]:
    flt = pb.PodSandboxFilter(id=pod_id, label_selector=parse_labels(args.label))
    if args.state:
        state = POD_STATES.get(args.state.lower())
        if state is None:
            raise CtlError("--state should be ready or notready")
        flt.state.state = state
    name_re, ns_re = compile_regex(args.name), compile_regex(args.namespace)
    with doing("listing pod sandboxes"):
        req = pb.ListPodSandboxRequest(filter=flt)
        items = client.runtime.ListPodSandbox(req, timeout=deadline(args)).items
    found = [
        p
        for p in items
        if p.HasField("metadata")
        and matches(name_re, p.metadata.name)
        and matches(ns_re, p.metadata.namespace)
    ]
    found.sort(key=lambda p: p.created_at, reverse=True)
    return found[: truncate_count(len(found), args.latest, args.last)]


def _handler(pod: pb.PodSandbox) -> str:
    return pod.runtime_handler or "(default)"


@command
def pods(client: Client, args: argparse.Namespace) -> int:
    found = list_pods(client, args, args.id)
    if args.output != "table":
        output_message(pb.ListPodSandboxResponse(items=found), args.output)
        return 0
    if args.quiet:
        for pod in found:
            print(pod.id)
        return 0
    if args.verbose:
        for pod in found:
            _print_pod_verbose(pod)
        return 0
    rows = [["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]]
    for pod in found:
        rows.append([
            pod.id if args.no_trunc else truncate_id(pod.id),
            age(pod.created_at),
            POD_STATE_NAMES.get(pod.state, "Unknown"),
            pod.metadata.name,
            pod.metadata.namespace,
            str(pod.metadata.attempt),
            _handler(pod),
        ])
    table(rows)
    return 0


def _print_pod_verbose(pod: pb.PodSandbox) -> None:
    print(f"ID: {pod.id}")
    md = pod.metadata
    if md.name:
        print(f"Name: {md.name}")
    if md.uid:
        print(f"UID: {md.uid}")
    if md.namespace:
        print(f"Namespace: {md.namespace}")
    if md.attempt:
        print(f"Attempt: {md.attempt}")
    print(f"Status: {POD_STATE_NAMES.get(pod.state, 'Unknown')}")
    print(f"Created: {go_time(pod.created_at)}")
    print_labels("Labels", dict(pod.labels))
    print_labels("Annotations", dict(pod.annotations))
    print(f"Runtime: {_handler(pod)}")
    print()


def pod_status_dict(status: pb.PodSandboxStatus) -> dict[str, Any]:
    data = message_dict(status, nulls=True)
    data["createdAt"] = rfc3339nano(status.created_at)
    return data


@command
def inspectp(client: Client, args: argparse.Namespace) -> int:
    ids = list(args.ids) or [p.id for p in list_pods(client, args)]
    verbose = not args.quiet
    return inspect_each(
        ids,
        lambda pod_id: pod_status(client, args, pod_id, verbose),
        lambda resp: status_document(pod_status_dict(resp.status), dict(resp.info)),
        lambda resp: _print_pod_status(resp, verbose),
        args.output,
    )


def _print_pod_status(resp: pb.PodSandboxStatusResponse, verbose: bool) -> None:
    st = resp.status
    print(f"ID: {st.id}")
    if st.HasField("metadata"):
        if st.metadata.name:
            print(f"Name: {st.metadata.name}")
        if st.metadata.uid:
            print(f"UID: {st.metadata.uid}")
        if st.metadata.namespace:
            print(f"Namespace: {st.metadata.namespace}")
        print(f"Attempt: {st.metadata.attempt}")
    print(f"Status: {pb.PodSandboxState.Name(st.state)}")
    print(f"Created: {go_time(st.created_at)}")
    if st.HasField("network"):
        print(f"IP Addresses: {st.network.ip}")
        for ip in st.network.additional_ips:
            print(f"Additional IP: {ip.ip}")
    print_labels("Labels", dict(st.labels))
    print_labels("Annotations", dict(st.annotations))
    if verbose:
        print(f"Info: {go_map(dict(resp.info))}")
