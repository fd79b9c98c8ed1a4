"""The engine environments on disk: what each holds, how big it is, and removing one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER = "inferd-env.json"  # written last: a folder without it is not a finished environment


@dataclass
class EnvInfo:
    name: str
    engine: str
    version: str
    platform: str
    path: str
    locked: bool  # built from a lock shipped with inferd, not resolved at build time
    packages: list[str]  # asked for beside the engine (Xinference's virtual_env_packages)
    created: float
    size_bytes: int = 0

    @property
    def python(self) -> str:
        return str(Path(self.path) / "bin" / "python")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "python": self.python}


def read_env(path: Path, sized: bool = False) -> EnvInfo | None:
    """The environment in `path`, or None if it is not a finished one; `sized` walks its files
    for its size (thousands of them for vLLM: not on a launch's path)."""
    try:
        data = json.loads((path / MARKER).read_text())
        size = tree_bytes(path) if sized else 0
        return EnvInfo(**{**data, "path": str(path), "size_bytes": size})
    except (OSError, ValueError, TypeError):
        return None


def write_marker(info: EnvInfo) -> None:
    data = asdict(info)
    data.pop("path"), data.pop("size_bytes")
    (Path(info.path) / MARKER).write_text(json.dumps(data, indent=2))


def list_envs(root: Path, sized: bool = True) -> list[EnvInfo]:
    if not root.is_dir():
        return []
    found = (read_env(p, sized) for p in sorted(root.iterdir()) if not p.name.startswith("."))
    return [info for info in found if info is not None]


def remove_env(path: Path) -> None:
    """Remove an environment, its marker first so that a half-removed one is never used."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def tree_bytes(path: Path) -> int:
    """Bytes the files under `path` take (files uv linked from its cache count in full)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
