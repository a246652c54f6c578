"""Which Python `make run` and `make test` build .venv with, on a machine whose PATH holds
only the Pythons each case names: `make -n run` in a copy of the Makefile shows the
command it would run, or the one line it stops with."""
from __future__ import annotations

import shutil
import subprocess  # nosec B404: runs make -n
from pathlib import Path

import pytest

from tests.servers import REPO

MAKE = shutil.which("make") or "/usr/bin/make"


def fake_python(directory: Path, name: str, version: str) -> Path:
    """An executable that answers `--version` as that Python would, and nothing else."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}" && exit\n'
                    'exit 1\n')
    path.chmod(0o755)
    return path


def make_n_run(tmp_path: Path, pythons: dict[str, str], *args: str) -> str:
    """Output of `make -n run` (stdout and stderr) with only these Pythons on PATH."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, checkout)
    for name, version in pythons.items():
        fake_python(tmp_path / "bin", name, version)
    done = subprocess.run(  # nosec B603: make with a fixed argument list
        [MAKE, "-n", "run", *args], cwd=checkout, env={"PATH": str(tmp_path / "bin")},
        capture_output=True, text=True, timeout=60, check=False)
    return done.stdout + done.stderr


def venv_command(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.endswith("-m venv .venv")]
    return line.removesuffix(" -m venv .venv")


@pytest.mark.parametrize("pythons, chosen", [
    ({"python3.12": "3.12.3"}, "python3.12"),  # Ubuntu 24.04
    ({"python3.13": "3.13.1"}, "python3.13"),
    ({"python3.12": "3.12.3", "python3.13": "3.13.1"}, "python3.13"),
    ({"python3.13": "3.13.1", "python3.11": "3.11.9"}, "python3.11"),  # the platform's
    ({"python3": "3.12.3", "python3.9": "3.9.18"}, "python3"),
])
def test_make_picks_python311_else_the_newest_else_python3(
        tmp_path: Path, pythons: dict[str, str], chosen: str) -> None:
    assert venv_command(make_n_run(tmp_path, pythons)) == chosen


@pytest.mark.parametrize("pythons, found", [
    ({"python3.9": "3.9.18"}, "Python 3.9.18 (python3.9)"),
    ({"python3": "3.10.12", "python3.9": "3.9.18"}, "Python 3.10.12 (python3)"),
    ({}, "no python3 on PATH (python3)"),
])
def test_an_older_python_stops_make_with_one_line_saying_what_is_needed(
        tmp_path: Path, pythons: dict[str, str], found: str) -> None:
    output = make_n_run(tmp_path, pythons)
    assert "-m venv" not in output
    [line] = [line for line in output.splitlines() if "***" in line]
    assert f"Python 3.11 or newer is needed, found {found}" in line
    assert "make PYTHON=" in line


def test_python_given_on_the_command_line_wins(tmp_path: Path) -> None:
    mine = fake_python(tmp_path / "mine", "python", "3.13.0")
    output = make_n_run(tmp_path, {"python3.11": "3.11.9"}, f"PYTHON={mine}")
    assert venv_command(output) == str(mine)


def test_python_given_on_the_command_line_must_be_new_enough_too(tmp_path: Path) -> None:
    old = fake_python(tmp_path / "old", "python", "3.10.4")
    output = make_n_run(tmp_path, {"python3.11": "3.11.9"}, f"PYTHON={old}")
    assert f"found Python 3.10.4 ({old})" in output and "-m venv" not in output
