"""What this server is and runs on: the answers Xinference's cluster and worker calls expect."""

from __future__ import annotations

import asyncio
import os
import platform

from fastapi import APIRouter, Request

from inferd import __version__
from inferd.api.deps import cluster as _cluster
from inferd.api.deps import manager as _manager
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
async def workers(request: Request) -> list[dict]:
    """Xinference's worker list: the machines model processes run on."""
    cluster = _cluster(request)
    if cluster is None:
        return [_node()]
    return await asyncio.to_thread(cluster.nodes)


@router.get("/cluster/nodes")
async def cluster_nodes(request: Request) -> dict:
    """The machines of this server, what they have and use, and the replicas on each."""
    manager = _manager(request)
    placed: dict[str, list[dict]] = {}
    for instance in manager.list():
        for replica in instance.replicas:
            if replica.process is not None and replica.status != "stopped":
                where = replica.node_id or "local"
                placed.setdefault(where, []).append(
                    {
                        "model_uid": instance.uid,
                        "replica": replica.index,
                        "engine": instance.engine.name,
                        "status": replica.status,
                    }
                )
    cluster = _cluster(request)
    if cluster is None:
        node = {**_node(), "id": "local", "address": "local", "alive": True}
        return {"mode": "single", "nodes": [{**node, "replicas": placed.get("local", [])}]}
    nodes = await asyncio.to_thread(cluster.nodes)
    return {
        "mode": "ray",
        "address": cluster.address,
        "nodes": [{**n, "replicas": placed.get(n["id"], [])} for n in nodes],
    }


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
