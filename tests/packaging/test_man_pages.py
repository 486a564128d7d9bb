"""The man pages stay true to --help: every command and option the binaries
offer is in their page, and the pages render without warnings."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

from conftest import BUILD

MAN = pathlib.Path(__file__).resolve().parents[2] / "packaging" / "man"


def help_of(binary: str, *command: str) -> str:
    return subprocess.run([BUILD / "agent" / binary, *command, "--help"], capture_output=True, text=True,
                          check=True).stdout


def long_options(help_text: str) -> set[str]:
    return set(re.findall(r"^\s+(?:-\w,)?(--[\w-]+)", help_text, re.M)) - {"--help"}


def subcommands(help_text: str) -> list[str]:
    section = help_text.split("Subcommands:\n", 1)
    return re.findall(r"^  (\S+)", section[1], re.M) if len(section) == 2 else []


def page(name: str) -> str:
    return (MAN / name).read_text().replace("\\-", "-").replace("\\fI", "").replace("\\fR", "").replace("\\fB", "")


@pytest.mark.parametrize("name", ["vpnmeterd.8", "vpnmeter.1"])
def test_page_renders_without_warnings(name):
    result = subprocess.run(["man", "--warnings", "-l", MAN / name], capture_output=True, text=True,
                            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_vpnmeterd_page_has_every_option():
    text = page("vpnmeterd.8")
    missing = sorted(o for o in long_options(help_of("vpnmeterd")) if o not in text)
    assert not missing, f"vpnmeterd.8 lacks {missing}"


def test_vpnmeter_page_has_every_command_and_option():
    text = page("vpnmeter.1")
    commands = [[c] for c in subcommands(help_of("vpnmeter"))]
    assert commands
    missing = sorted(o for o in long_options(help_of("vpnmeter")) if o not in text)
    while commands:
        command = commands.pop()
        if f".B {' '.join(command)}" not in text and f".BI \"{' '.join(command)}\"" not in text and \
                f".BI {' '.join(command)} " not in text and f".BI \"{' '.join(command)}" not in text:
            missing.append(" ".join(command))
        help_text = help_of("vpnmeter", *command)
        commands += [command + [sub] for sub in subcommands(help_text)]
        missing += sorted(f"{' '.join(command)} {o}" for o in long_options(help_text) if o not in text)
    assert not missing, f"vpnmeter.1 lacks {missing}"
