"""argv merging, env, working dir and rlimits of the OCI process."""

from __future__ import annotations

from typing import Any

import pytest

from pycrio.errors import InvalidArgument
from pycrio.oci.spec_process import (
    DEFAULT_PATH,
    image_runtime_config,
    merge_env,
    process_args,
    rlimits,
    working_dir,
)

IMAGE = {"Entrypoint": ["/ep", "-x"], "Cmd": ["c1", "c2"]}


@pytest.mark.parametrize(
    ("command", "args", "image", "expected"),
    [
        ([], [], IMAGE, ["/ep", "-x", "c1", "c2"]),  # image defaults
        (["/bin/sh"], [], IMAGE, ["/bin/sh"]),  # command drops Entrypoint AND Cmd
        (["/bin/sh"], ["-c", "x"], IMAGE, ["/bin/sh", "-c", "x"]),
        ([], ["a1"], IMAGE, ["/ep", "-x", "a1"]),  # args alone replace Cmd only
        ([], [], {"Cmd": ["only"]}, ["only"]),
        ([], ["a"], {"Cmd": ["only"]}, ["a"]),
        ([], [], {"Entrypoint": [""], "Cmd": ["c"]}, ["c"]),  # ENTRYPOINT [""] means none
        ([], [], {"Entrypoint": None, "Cmd": ["c"]}, ["c"]),
    ],
)
def test_process_args(
    command: list[str], args: list[str], image: dict[str, Any], expected: list[str]
) -> None:
    assert process_args(command, args, image) == expected


@pytest.mark.parametrize("image", [{}, {"Entrypoint": [""]}, {"Cmd": []}])
def test_process_args_nothing_to_run(image: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        process_args([], [], image)


def test_process_args_bad_image_type() -> None:
    with pytest.raises(InvalidArgument, match="list of strings"):
        process_args([], [], {"Cmd": "sh -c x"})


def test_image_runtime_config_accepts_whole_document() -> None:
    whole = {"architecture": "amd64", "config": {"Cmd": ["x"]}}
    assert image_runtime_config(whole) == {"Cmd": ["x"]}
    assert image_runtime_config({"Cmd": ["y"]}) == {"Cmd": ["y"]}


@pytest.mark.parametrize(
    ("image_env", "cri", "tty", "home", "expected"),
    [
        ([], [], False, None, ["HOSTNAME=pod", f"PATH={DEFAULT_PATH}"]),
        (["PATH=/x", "A=1"], [("A", "2"), ("B", "3")], False, None,
         ["HOSTNAME=pod", "PATH=/x", "A=2", "B=3"]),
        (["HOSTNAME=img"], [], False, None, ["HOSTNAME=img", f"PATH={DEFAULT_PATH}"]),
        ([], [("PATH", "/cri")], True, "/home/u",
         ["HOSTNAME=pod", "PATH=/cri", "TERM=xterm", "HOME=/home/u"]),
        (["TERM=vt100", "HOME=/h"], [], True, "/home/u", ["HOSTNAME=pod", "TERM=vt100", "HOME=/h",
                                                         f"PATH={DEFAULT_PATH}"]),
        (["NOVALUE", "E="], [("", "skipped")], False, None, ["HOSTNAME=pod", "NOVALUE", "E=",
                                                             f"PATH={DEFAULT_PATH}"]),
        (["A=x=y"], [("A", "p=q")], False, None, ["HOSTNAME=pod", "A=p=q", f"PATH={DEFAULT_PATH}"]),
    ],
)
def test_merge_env(
    image_env: list[str], cri: list[tuple[str, str]], tty: bool, home: str | None, expected: list[str]
) -> None:
    assert merge_env(image_env, cri, hostname="pod", tty=tty, home=home) == expected


@pytest.mark.parametrize(
    ("cri", "image", "expected"),
    [("", "", "/"), ("/w", "/img", "/w"), ("", "/img/", "/img"), ("", "rel", "/rel"), ("/a/../b", "", "/b")],
)
def test_working_dir(cri: str, image: str, expected: str) -> None:
    assert working_dir(cri, image) == expected


def test_working_dir_relative_cri_refused() -> None:
    with pytest.raises(InvalidArgument, match="absolute"):
        working_dir("rel", "")


def test_rlimits() -> None:
    assert rlimits({"RLIMIT_NOFILE": (1024, 4096)}) == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096}]
    assert rlimits({}) == []
    with pytest.raises(InvalidArgument, match="unknown rlimit"):
        rlimits({"NOFILE": (1, 1)})
    with pytest.raises(InvalidArgument, match="above the hard"):
        rlimits({"RLIMIT_NOFILE": (10, 1)})
