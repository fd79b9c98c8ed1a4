"""CUDA's libraries from NVIDIA's wheels (`nvidia-cublas-cu12`, ...), made visible to engines
that look for them by name.

An engine built on CUDA but not on PyTorch (CTranslate2) opens `libcublas.so.12` by name, which
the dynamic loader finds only on LD_LIBRARY_PATH or the system's paths, never in a wheel's folder
(`site-packages/nvidia/cublas/lib`), and LD_LIBRARY_PATH is read once, when the process starts.
A library already loaded is found by that name, so loading the wheel's copy first by its path
is enough (PyTorch does the same with its own).
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def load(package: str, library: str) -> Path | None:
    """Load `library` (a file name, `libcublas.so.12`) from the first `nvidia/PACKAGE/lib` on
    the import path; the path loaded, or None where no wheel of NVIDIA's holds it (the system's
    CUDA, if any, is then the engine's to find)."""
    for entry in sys.path:
        path = Path(entry or ".") / "nvidia" / package / "lib" / library
        if path.is_file():
            try:
                # Global: the engine's own lookup by name then finds it.
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as error:  # the engine says what it lacks when it looks
                log.warning("could not load %s: %s", path, error)
                return None
            log.info("loaded %s from %s", library, path.parent)
            return path
    return None
