"""What this server is and runs on: the answers Xinference's cluster and worker calls expect."""

from __future__ import annotations

import os
import platform

from fastapi import APIRouter, Request

from inferd import __version__
from inferd.runtime.gpus import discover

router = APIRouter(prefix="/v1")


@router.get("/cluster/auth")
async def cluster_auth(request: Request) -> dict:
    """Whether clients must send a key; xinference-client asks this when it connects."""
    return {"auth": bool(request.app.state.settings.auth)}


@router.get("/address")
async def address(request: Request) -> str:
    return f"{request.url.hostname}:{request.url.port}"


@router.get("/supervisor")
async def supervisor(request: Request) -> dict:
    return {"supervisor_address": f"{request.url.hostname}:{request.url.port}", **_node()}


@router.get("/workers")
async def workers() -> list[dict]:
    return [_node()]


def _node() -> dict:
    gpus = discover()
    memory: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                if key in ("MemTotal", "MemAvailable"):
                    memory[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return {
        "node": platform.node(),
        "version": __version__,
        "cpu_count": os.cpu_count(),
        "memory_total": memory.get("MemTotal"),
        "memory_available": memory.get("MemAvailable"),
        "gpu_count": len(gpus),
        "gpus": [
            {"index": g.index, "name": g.name, "memory_total": g.total, "memory_free": g.free}
            for g in gpus
        ],
    }
