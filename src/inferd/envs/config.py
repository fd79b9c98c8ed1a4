"""Where engine environments install from: inferd's settings, then pip's own."""

from __future__ import annotations

import configparser
import contextlib
import os
import sys
from pathlib import Path

from inferd.envs.builder import EnvBuilder
from inferd.settings import Settings


def engine_envs(settings: Settings) -> EnvBuilder:
    """The builder of engine environments, fed the wheel folders and index pip is given here
    too: uv reads none of pip's settings, and a resolve that misses a wheel folder holding
    torch's CPU build would fetch the CUDA one from PyPI."""
    pip = pip_settings()
    links = [str(p) for p in settings.wheels or []]
    links += [link for link in pip.get("find-links", "").split() if link not in links]
    index = settings.engine_index_url or pip.get("index-url") or None
    return EnvBuilder(
        settings.envs_dir,
        find_links=links,
        index_url=index,
        offline=settings.engine_offline,
        torch_index=None if settings.torch_index_url == "none" else settings.torch_index_url,
    )


def pip_settings() -> dict[str, str]:
    """pip's find-links and index-url as pip itself would take them here: its environment
    variables over its configuration files (read without running pip, which costs a second)."""
    found: dict[str, str] = {}
    files = [
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        Path.home() / ".config" / "pip" / "pip.conf",
        Path.home() / ".pip" / "pip.conf",
        Path(sys.prefix) / "pip.conf",  # pip's "site" file, of the server's environment
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    for path in files:
        parser = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
            for key in ("find-links", "index-url"):
                for section in ("global", "install"):
                    if parser.has_option(section, key):
                        found[key] = parser.get(section, key)
    for key in ("find-links", "index-url"):
        value = os.environ.get(f"PIP_{key.upper().replace('-', '_')}")
        if value:
            found[key] = value
    return found
