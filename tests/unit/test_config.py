from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pycrio import config
from pycrio.config import Config, ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    cfg = config.load(None, None)
    assert cfg.root == "/var/lib/pycrio"
    assert cfg.runroot == "/run/pycrio"
    assert cfg.listen == "/run/pycrio/pycrio.sock"
    assert cfg.default_runtime == "runc"
    assert set(cfg.runtimes) == {"runc", "crun"}
    assert cfg.cni.plugin_dirs == ["/usr/lib/cni", "/opt/cni/bin"]
    assert cfg.runtime_root("runc") == "/run/pycrio/runtimes/runc"


def test_effective_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = Config()
    cfg.log_level = "debug"
    cfg.runtimes["kata"] = config.RuntimeHandler(path="/usr/bin/kata", root="/run/kata")
    path = write(tmp_path / "out.toml", cfg.to_toml())
    again = config.load(path, None)
    assert again == cfg
    assert tomllib.loads(cfg.to_toml())["runtimes"]["kata"]["root"] == "/run/kata"


def test_precedence_default_file_dropin_flag(tmp_path: Path) -> None:
    main = write(tmp_path / "pycrio.toml", 'log_level = "warning"\nlog_size_max = 100\nconmon = "/a"\n')
    drop = tmp_path / "d"
    write(drop / "10-a.toml", 'log_size_max = 200\nconmon = "/b"\n')
    write(drop / "20-b.toml", 'conmon = "/c"\n')
    write(drop / "ignored.txt", "not toml at all [[[")
    cfg = config.load(main, drop, {"log_size_max": 300})
    assert cfg.log_level == "warning"  # file over default
    assert cfg.conmon == "/c"  # later drop-in over earlier and over the file
    assert cfg.log_size_max == 300  # flag over everything
    assert cfg.stop_timeout == 10  # untouched default


def test_dropin_changes_one_runtime_without_restating_others(tmp_path: Path) -> None:
    main = write(tmp_path / "p.toml", '[runtimes.runc]\npath = "/opt/runc"\n')
    cfg = config.load(main, None)
    assert cfg.runtimes["runc"].path == "/opt/runc"
    assert cfg.runtimes["crun"].path == "/usr/bin/crun"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[cni]\nconf_dirs = '/x'\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, None)
    assert str(path) in str(exc.value)
    assert "cni.conf_dirs" in str(exc.value)


def test_wrong_type_names_expected_type(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "log_size_max = 'big'\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, None)
    msg = str(exc.value)
    assert str(path) in msg and "log_size_max" in msg and "integer" in msg


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "stop_timeout = true\n")
    with pytest.raises(ConfigError, match="stop_timeout"):
        config.load(path, None)


def test_list_item_type_checked(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[cni]\nplugin_dirs = ['/a', 3]\n")
    with pytest.raises(ConfigError, match=r"plugin_dirs\[1\]"):
        config.load(path, None)


def test_invalid_toml_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "root = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path, None)


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml", None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("log_level = 'loud'\n", "log_level"),
        ("cgroup_manager = 'mine'\n", "cgroup_manager"),
        ("default_runtime = 'kata'\n", "default_runtime"),
        ("root = 'relative'\n", "absolute"),
        ("[streaming]\nport = 70000\n", "port"),
    ],
)
def test_value_validation(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=fragment):
        config.load(path, None)


def test_reload_applies_only_live_keys() -> None:
    live = Config()
    new = Config()
    new.log_level = "debug"
    new.root = "/elsewhere"
    new.image.pull_min_rate = 5
    applied, ignored = config.apply_reload(live, new)
    assert "log_level" in applied and "image.pull_min_rate" in applied
    assert ignored == ["root"]
    assert live.log_level == "debug" and live.image.pull_min_rate == 5
    assert live.root == "/var/lib/pycrio"
