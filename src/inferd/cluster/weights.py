"""Weights for nodes that do not share the server's disk.

The server downloads weights on its own machine. A node that cannot see them at the same path
(no shared filesystem), or every node when copies are asked for (INFERD_CLUSTER_WEIGHTS=copy),
copies them into its own cache through Ray, which already connects the nodes: `WeightSource`, an
actor on the server's node, reads them in chunks; `fetch`, on the node, writes them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("inferd.cluster")

CHUNK = 32 << 20  # bytes per call: large enough to keep Ray's transfer busy, small for memory
_DONE = ".complete"


class WeightSource:
    """Reads the weights the server keeps, for nodes that copy them."""

    def files(self, root: str) -> list[tuple[str, int]]:
        """The files of a model (relative paths, sizes); a single-file model is ("", size)."""
        base = Path(root)
        if base.is_file():
            return [("", base.stat().st_size)]
        return [
            (str(p.relative_to(base)), p.stat().st_size)
            for p in sorted(base.rglob("*"))
            if p.is_file()
        ]

    def chunk(self, root: str, relative: str, offset: int) -> bytes:
        if ".." in Path(relative).parts:
            raise ValueError(f"{relative!r} leaves the model's folder")
        path = Path(root) / relative if relative else Path(root)
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(CHUNK)


def node_cache() -> Path:
    """Where this node keeps the weights it copied: its own INFERD_HOME."""
    return Path(os.environ.get("INFERD_HOME", "~/.inferd")).expanduser() / "node-cache"


async def fetch(source: Any, root: str, source_node: str) -> str:
    """The weights at the server's `root`, copied into this node's cache (once: a finished
    copy is used again); the local path to load them from."""
    key = hashlib.sha256(f"{source_node}:{root}".encode()).hexdigest()[:16]
    folder = node_cache() / key
    target = folder / (Path(root).name or "model")
    if (folder / _DONE).exists():
        return str(target)
    files: list[tuple[str, int]] = await source.files.remote(root)
    copied = 0
    for relative, size in files:
        path = target / relative if relative else target
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size == size:
            continue  # from a copy that was cut short
        partial = path.with_name(path.name + ".part")
        with open(partial, "wb") as out:
            offset = 0
            while offset < size:
                data: bytes = await source.chunk.remote(root, relative, offset)
                if not data:
                    raise OSError(f"{root}/{relative} ended at {offset} of {size} bytes")
                out.write(data)
                offset += len(data)
        partial.replace(path)
        copied += size
    (folder / _DONE).touch()
    log.info("copied %.1f MB of weights from %s to %s", copied / 1e6, root, target)
    return str(target)
