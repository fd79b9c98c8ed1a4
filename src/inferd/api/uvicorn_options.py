"""The settings the API's HTTP servers run uvicorn with: the server alone, the server behind
its fronts, and each front (model processes set their own, `runtime/worker.py`). One place, so
a setting (as the keep-alive once was) is not given to one of them and missed in another."""

from __future__ import annotations

from typing import Any

from inferd.settings import Settings


def uvicorn_options(settings: Settings, log_level: str) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` and `uvicorn.Config`."""
    return {
        "log_level": log_level.lower(),
        "timeout_graceful_shutdown": int(settings.terminate_timeout),
        # Clients' connections, and the fronts' to the server, stay open this long idle.
        "timeout_keep_alive": settings.keep_alive_timeout,
    }
