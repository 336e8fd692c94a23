"""``pycrio``: run the daemon, or print its effective configuration.

Flags are named as CRI-O names them and override the configuration files.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pycrio import __version__
from pycrio import log as pylog
from pycrio.config import ConfigError
from pycrio.daemon import ConfigSources, serve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycrio", description="pycrio, a Kubernetes CRI runtime")
    p.add_argument("--version", action="version", version=f"pycrio {__version__}")
    p.add_argument("--config", "-c", type=Path, help="configuration file (default /etc/pycrio/pycrio.toml)")
    p.add_argument("--config-dir", "-d", type=Path, help="drop-in directory (default /etc/pycrio/pycrio.d)")
    p.add_argument("--root", help="persistent state directory")
    p.add_argument("--runroot", help="volatile state directory")
    p.add_argument("--listen", help="path of the CRI unix socket")
    p.add_argument("--log-level", help="trace, debug, info, warning, error, fatal")
    p.add_argument("--log-format", help="text or json")
    p.add_argument("--default-runtime", help="runtime handler for pods that name none")
    p.add_argument("--cgroup-manager", help="cgroupfs or systemd")
    p.add_argument("--cni-config-dir", help="directory of CNI network configurations")
    p.add_argument("--cni-plugin-dir", action="append", help="directory of CNI plugins (repeatable)")
    p.add_argument("--registries-conf", help="containers-registries.conf(5) file")
    p.add_argument("--registries-conf-dir", help="registries.conf drop-in directory")
    p.add_argument("--auth-file", help="containers-auth.json(5) file with registry credentials")
    p.add_argument("--streaming-port", type=int, help="port of the streaming server (0: random)")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("config", help="print the effective configuration as TOML")
    sub.add_parser("install-cni-default", help="write the default CNI network if none is configured")
    return p


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as a nested dict in the shape of the TOML file."""
    top = {
        "root": args.root,
        "runroot": args.runroot,
        "listen": args.listen,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "default_runtime": args.default_runtime,
        "cgroup_manager": args.cgroup_manager,
    }
    out: dict[str, Any] = {k: v for k, v in top.items() if v is not None}
    cni = {"conf_dir": args.cni_config_dir, "plugin_dirs": args.cni_plugin_dir}
    image = {
        "registries_conf": args.registries_conf,
        "registries_conf_dir": args.registries_conf_dir,
        "auth_file": args.auth_file,
    }
    streaming = {"port": args.streaming_port}
    for name, table in (("cni", cni), ("image", image), ("streaming", streaming)):
        table = {k: v for k, v in table.items() if v is not None}
        if table:
            out[name] = table
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sources = ConfigSources(args.config, args.config_dir, overrides_from(args))
    try:
        cfg = sources.load()
    except ConfigError as exc:
        print(f"pycrio: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        sys.stdout.write(cfg.to_toml())
        return 0
    if args.command == "install-cni-default":
        from pycrio.network.defaults import install_default_conflist

        written = install_default_conflist(Path(cfg.cni.conf_dir), plugin_dirs=cfg.cni.plugin_dirs)
        print(f"wrote {written}" if written else f"{cfg.cni.conf_dir} already has a network; left as is")
        return 0
    pylog.setup(cfg.log_level, cfg.log_format)
    try:
        return asyncio.run(serve(cfg, sources))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
