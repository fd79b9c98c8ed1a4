"""The container images and the compose file, checked without Docker (which these machines lack):
hadolint on the Dockerfiles, and every inferd command and extra they use checked against the
real CLI and inferd's own extras."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from inferd.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda"]


def _hadolint() -> str:
    return str(Path(sys.executable).parent / "hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_faults() -> None:
    bad = "FROM python\nRUN pip install requests\nUSER someone\n"
    result = subprocess.run([_hadolint(), "-"], input=bad, capture_output=True, text=True)
    assert result.returncode != 0 and "DL3013" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_install_extras_that_exist(dockerfile: Path) -> None:
    extras = set(importlib.metadata.metadata("inferd").get_all("Provides-Extra") or [])
    text = dockerfile.read_text()
    asked = {e.strip() for group in re.findall(r'"\.\[([^\]]+)\]"', text) for e in group.split(",")}
    assert asked and asked <= extras, asked - extras
    assert "torch==2.13.0" in text  # before anything that depends on it


def _inferd_commands() -> list[list[str]]:
    """Every inferd command line the images and the compose file run."""
    commands = []
    for dockerfile in DOCKERFILES:
        cmd = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(), re.M)
        assert cmd is not None
        commands.append(yaml.safe_load(cmd.group(1)))
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for service in compose["services"].values():
        for line in service.get("command", []):
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:1] == ["exec"]:
                    words = words[1:]
                if words[:1] == ["inferd"]:
                    commands.append(words[1:])
    return commands


def test_image_commands_are_real_inferd_commands() -> None:
    commands = _inferd_commands()
    assert ["serve", "--auth"] in commands
    assert any("--ray-address" in c for c in commands)
    for args in commands:
        command = cli.get_command(click.Context(cli), args[0])
        assert command is not None, args
        command.make_context(args[0], args[1:])  # raises on an unknown option


def test_compose_joins_workers_to_the_head() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    head, worker = compose["services"]["head"], compose["services"]["worker"]
    assert "ray start --head --port=6379" in head["command"][0]
    assert "ray start --address=head:6379" in worker["command"][0]
    # One volume: on one Docker host the nodes load the server's weights without copying.
    assert head["volumes"] == worker["volumes"] == ["models:/data"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
