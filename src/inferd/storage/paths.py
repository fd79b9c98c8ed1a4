"""Where local weights may be read from.

With INFERD_ALLOWED_PATHS set, every path a client names (a registration's model_uri, a
launch's model_path, a LoRA adapter's folder) must lie inside one of those folders once `..`
and symbolic links are resolved; without it, any path the server's user can read will do
(the default: whoever can launch is an admin on their own machine).
"""

from __future__ import annotations

import os
from pathlib import Path

from inferd.errors import Forbidden
from inferd.settings import get_settings


def confined(path: str | Path, param: str) -> Path:
    """`path` with `~` expanded; a 403 naming `param` if it leads outside the allowed folders."""
    given = Path(path).expanduser()
    allowed = get_settings().allowed_paths
    if allowed is None:
        return given
    real = Path(os.path.realpath(given))
    if any(real == root or real.is_relative_to(root) for root in allowed):
        return given
    roots = os.pathsep.join(str(root) for root in allowed)
    raise Forbidden(
        f"{param} {str(path)!r} is outside the folders this server may read weights from "
        f"(INFERD_ALLOWED_PATHS={roots})",
        param=param,
    )
