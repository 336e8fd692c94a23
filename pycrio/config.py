"""pycrio's configuration: embedded defaults < TOML file < drop-ins < flags.

The file is ``/etc/pycrio/pycrio.toml``; drop-ins are ``/etc/pycrio/pycrio.d/*.toml``
read in lexical order, later files winning key by key. Every key has a default
here, so the daemon runs with no file at all. An unknown key or a value of the
wrong type is an error that names the file, the key and the expected type.

The schema is the dataclasses below: a field's annotation is its TOML type.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomli_w

DEFAULT_CONFIG_FILE = Path("/etc/pycrio/pycrio.toml")
DEFAULT_CONFIG_DIR = Path("/etc/pycrio/pycrio.d")

LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "fatal")
LOG_FORMATS = ("text", "json")
CGROUP_MANAGERS = ("cgroupfs", "systemd")


class ConfigError(Exception):
    """A configuration file or flag that pycrio cannot accept."""


@dataclass
class RuntimeHandler:
    """An OCI runtime pycrio can run containers with (``[runtimes.<name>]``)."""

    path: str = ""
    # The runtime's state directory (``--root``); empty: ``<runroot>/runtimes/<name>``.
    root: str = ""


@dataclass
class ImageConfig:
    """``[image]``: registries, credentials and pull behaviour."""

    registries_conf: str = "/etc/containers/registries.conf"
    registries_conf_dir: str = "/etc/containers/registries.conf.d"
    # containers-auth.json(5); empty: the standard locations
    # (${XDG_RUNTIME_DIR}/containers/auth.json, /run/containers/0/auth.json, ~/.docker/config.json).
    auth_file: str = ""
    certs_dir: str = "/etc/containers/certs.d"
    # Layers of one image downloaded at the same time.
    max_parallel_downloads: int = 4
    # A transfer slower than pull_min_rate bytes/s for pull_progress_timeout seconds is aborted.
    pull_progress_timeout: int = 60
    pull_min_rate: int = 1024
    # Attempts per request on 5xx answers and dropped connections.
    pull_retries: int = 5
    # The image given to `crictl runp` callers that ask for one; pods themselves need none.
    pause_image: str = "registry.k8s.io/pause:3.10"


@dataclass
class CNIConfig:
    """``[cni]``: where network configurations and plugins live."""

    conf_dir: str = "/etc/cni/net.d"
    plugin_dirs: list[str] = field(default_factory=lambda: ["/usr/lib/cni", "/opt/cni/bin"])
    # Network to use; empty: the lexically first valid configuration in conf_dir.
    default_network: str = ""
    # Seconds a plugin may run before it is killed.
    plugin_timeout: int = 60


@dataclass
class StreamingConfig:
    """``[streaming]``: the exec/attach/port-forward HTTP server."""

    address: str = "127.0.0.1"
    # 0: a random free port.
    port: int = 0
    tls_cert: str = ""
    tls_key: str = ""
    # Seconds a streaming URL stays valid.
    token_ttl: int = 60
    # Seconds of silence after which a stream is closed.
    idle_timeout: int = 14400


@dataclass
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (off by default)."""

    enable: bool = False
    address: str = "127.0.0.1"
    port: int = 9090


def _default_runtimes() -> dict[str, RuntimeHandler]:
    return {
        "runc": RuntimeHandler(path="/usr/sbin/runc"),
        "crun": RuntimeHandler(path="/usr/bin/crun"),
    }


@dataclass
class Config:
    """The whole configuration; top-level keys first, then the tables."""

    root: str = "/var/lib/pycrio"
    runroot: str = "/run/pycrio"
    listen: str = "/run/pycrio/pycrio.sock"
    log_level: str = "info"
    log_format: str = "text"
    # Bytes a container log may grow to before conmon truncates it; -1: no limit.
    log_size_max: int = -1
    cgroup_manager: str = "cgroupfs"
    # Parent cgroup for pods that name none.
    cgroup_parent: str = "/pycrio"
    conmon: str = "/usr/bin/conmon"
    default_runtime: str = "runc"
    # Runs as PID 1 of pods that share one PID namespace (it only reaps).
    pause_command: list[str] = field(default_factory=lambda: ["/usr/bin/catatonit", "-P"])
    # Seccomp profile for RuntimeDefault; empty: the one built into pycrio.
    seccomp_profile: str = ""
    # Capabilities a container gets unless it adds or drops some.
    default_capabilities: list[str] = field(
        default_factory=lambda: [
            "CHOWN",
            "DAC_OVERRIDE",
            "FSETID",
            "FOWNER",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "NET_BIND_SERVICE",
            "KILL",
        ]
    )
    # Default pids.max per container; 0: no limit.
    pids_limit: int = 0
    # Seconds StopContainer waits when the request gives no timeout.
    stop_timeout: int = 10
    runtimes: dict[str, RuntimeHandler] = field(default_factory=_default_runtimes)
    image: ImageConfig = field(default_factory=ImageConfig)
    cni: CNIConfig = field(default_factory=CNIConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    # -- derived paths --------------------------------------------------
    def runtime_root(self, name: str) -> str:
        handler = self.runtimes[name]
        return handler.root or os.path.join(self.runroot, "runtimes", name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The configuration as TOML that :func:`load` accepts back."""
        return tomli_w.dumps(self.to_dict())


# Keys SIGHUP applies to the running daemon; the rest need a restart.
RELOADABLE = (
    "log_level",
    "log_size_max",
    "default_runtime",
    "runtimes",
    "pids_limit",
    "stop_timeout",
    "default_capabilities",
    "seccomp_profile",
    "image",
    "cni.plugin_dirs",
    "cni.plugin_timeout",
)


# -- loading ------------------------------------------------------------

_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", float: "float"}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        return f"array of {_type_name(get_args(tp)[0])}s"
    if origin is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return _TYPE_NAMES.get(tp, str(tp))


def _check_value(value: Any, tp: Any, where: str, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError."""
    origin = get_origin(tp)
    bad = ConfigError(f"{where}: key {key!r} must be a {_type_name(tp)}, not {type(value).__name__}")
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = get_args(tp)
        return [_check_value(v, item_tp, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, item_tp = get_args(tp)
        return {k: _check_value(v, item_tp, where, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif tp is bool:
        if not isinstance(value, bool):
            raise bad
    elif tp is str and not isinstance(value, str):
        raise bad
    return value


def _merge_into(obj: Any, data: dict[str, Any], where: str, prefix: str = "") -> None:
    """Merge a parsed TOML table into dataclass ``obj``, checking every key."""
    hints = get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{where}: unknown key {full!r} (known keys here: {known})")
        tp = hints[key]
        value = _check_value(value, tp, where, full)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(tp):
            _merge_into(current, value, where, f"{full}.")
        elif get_origin(tp) is dict:
            # The runtimes table: entries merge one by one, so a drop-in can
            # change one runtime's path without restating the others.
            (_, item_tp) = get_args(tp)
            for name, table in value.items():
                entry = current.get(name) or item_tp()
                _merge_into(entry, table, where, f"{full}.{name}.")
                current[name] = entry
        else:
            setattr(obj, key, copy.deepcopy(value))


def _validate(cfg: Config) -> None:
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {cfg.log_level!r}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {cfg.log_format!r}")
    if cfg.cgroup_manager not in CGROUP_MANAGERS:
        raise ConfigError(
            f"cgroup_manager must be one of {', '.join(CGROUP_MANAGERS)}, not {cfg.cgroup_manager!r}"
        )
    if cfg.default_runtime not in cfg.runtimes:
        raise ConfigError(
            f"default_runtime {cfg.default_runtime!r} is not in [runtimes] "
            f"({', '.join(sorted(cfg.runtimes)) or 'none'})"
        )
    for name, handler in cfg.runtimes.items():
        if not handler.path:
            raise ConfigError(f"runtimes.{name}.path must be set")
    if not cfg.pause_command:
        raise ConfigError("pause_command must name a program")
    for key in ("root", "runroot"):
        if not os.path.isabs(getattr(cfg, key)):
            raise ConfigError(f"{key} must be an absolute path, not {getattr(cfg, key)!r}")
    if not 0 <= cfg.streaming.port <= 65535 or not 0 <= cfg.metrics.port <= 65535:
        raise ConfigError("streaming.port and metrics.port must be between 0 and 65535")
    if cfg.image.max_parallel_downloads < 1:
        raise ConfigError("image.max_parallel_downloads must be at least 1")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def config_files(config_file: Path | None, config_dir: Path | None) -> list[Path]:
    """The files that make up the configuration, in the order they apply.

    An explicitly named file must exist; the default one may be absent, and so
    may the drop-in directory (named or not).
    """
    files: list[Path] = []
    main = config_file if config_file is not None else DEFAULT_CONFIG_FILE
    if main.exists() or config_file is not None:
        files.append(main)
    drop_dir = config_dir if config_dir is not None else DEFAULT_CONFIG_DIR
    if drop_dir.is_dir():
        files.extend(sorted(p for p in drop_dir.iterdir() if p.suffix == ".toml" and p.is_file()))
    return files


def load(
    config_file: Path | None = None,
    config_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the effective configuration.

    ``overrides`` are command-line values as a nested dict in the file's shape
    (e.g. ``{"cni": {"conf_dir": ...}}``); they apply last.
    """
    cfg = Config()
    for path in config_files(config_file, config_dir):
        _merge_into(cfg, read_toml(path), str(path))
    if overrides:
        _merge_into(cfg, overrides, "command line")
    _validate(cfg)
    return cfg


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names of the keys whose values differ (tables compared one level down)."""
    out: list[str] = []
    a, b = old.to_dict(), new.to_dict()
    for key in a:
        if isinstance(a[key], dict) and key != "runtimes":
            out.extend(f"{key}.{sub}" for sub in a[key] if a[key][sub] != b[key].get(sub))
        elif a[key] != b[key]:
            out.append(key)
    return out


def is_reloadable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RELOADABLE)


def apply_reload(live: Config, new: Config) -> tuple[list[str], list[str]]:
    """Copy reloadable keys from ``new`` into ``live``.

    Returns (applied keys, keys that changed but need a restart).
    """
    applied: list[str] = []
    ignored: list[str] = []
    for key in changed_keys(live, new):
        if not is_reloadable(key):
            ignored.append(key)
            continue
        applied.append(key)
        if "." in key:
            table, sub = key.split(".", 1)
            setattr(getattr(live, table), sub, copy.deepcopy(getattr(getattr(new, table), sub)))
        else:
            setattr(live, key, copy.deepcopy(getattr(new, key)))
    return applied, ignored
