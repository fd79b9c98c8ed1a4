"""Engine environments: which are built, building one ahead of a launch, removing one."""

from __future__ import annotations

import asyncio
from dataclasses import fields
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from inferd.api.deps import manager as _manager
from inferd.envs import SPECS, list_envs
from inferd.envs.builder import EnvPlan
from inferd.envs.store import EnvInfo, read_env, remove_env
from inferd.errors import Conflict, NotFound
from inferd.runtime.engine_env import EngineEnvs
from inferd.runtime.manager import ModelManager

router = APIRouter()


class BuildRequest(BaseModel):
    engine: str = Field(min_length=1, description="The engine, as model_engine names it")
    version: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.+\-]+$")
    packages: list[str] | None = Field(default=None, description="More packages beside it")


@router.get("/v1/engine_environments")
async def list_environments(request: Request) -> dict[str, Any]:
    """The environments built here, the models running in each, and the engines that can
    have one (with the versions inferd ships a tested lock for)."""
    manager = _manager(request)
    users = _users(manager)
    built = await asyncio.to_thread(list_envs, manager.engine_envs.builder.root)
    here = {env.name for env in built}
    # On a Ray cluster the nodes build environments through Ray (runtime_env) and keep their
    # files: those in use are named by their models, with no size or path here.
    on_nodes = (
        {m.env_plan.name: m.env_plan for m in manager.list() if m.env_plan is not None}
        if request.app.state.cluster is not None
        else {}
    )
    listed = [{**e.as_dict(), "where": "here", "models": users.get(e.name, [])} for e in built]
    listed += [_on_nodes(plan, users[name]) for name, plan in on_nodes.items() if name not in here]
    platform = manager.engine_envs.platform()
    return {
        "data": listed,
        "engines": {
            name: {"locked_versions": spec.locked_versions(platform), "package": spec.package}
            for name, spec in SPECS.items()
        },
        "platform": platform,
        "mode": manager.settings.engine_env,
    }


@router.post("/v1/engine_environments")
async def build_environment(body: BuildRequest, request: Request) -> dict[str, Any]:
    """Build an engine's environment now (the first launch on it would otherwise)."""
    manager = _manager(request)
    builder = manager.engine_envs.builder
    plan = builder.plan(
        body.engine, manager.engine_envs.platform(), body.version, body.packages, param="engine"
    )
    lines: list[str] = []
    built = await builder.ensure(plan, lines.append)
    # A build just made comes back sized; one found already built is walked for its size here.
    sized = built if built.size_bytes else await asyncio.to_thread(read_env, Path(built.path), True)
    return {**(sized or built).as_dict(), "log": lines}


@router.delete("/v1/engine_environments/{name}")
async def remove_environment(name: str, request: Request) -> dict[str, Any]:
    manager = _manager(request)
    users = _users(manager).get(name)
    if users:
        raise Conflict(
            f"{name} is in use by {', '.join(users)}; terminate them first", param="name"
        )
    root = manager.engine_envs.builder.root
    # Only the one removed is walked for its size; the others are named.
    built = [env.name for env in await asyncio.to_thread(list_envs, root, False)]
    if name not in built:
        raise NotFound(
            f"no engine environment {name!r} (built: {', '.join(built) or 'none'})", param="name"
        )
    found = await asyncio.to_thread(read_env, root / name, True)
    await asyncio.to_thread(remove_env, root / name)
    return {"removed": name, "size_bytes": found.size_bytes if found else 0}


def _on_nodes(plan: EnvPlan, models: list[str]) -> dict[str, Any]:
    """A node-built environment listed as a built one is (`EnvInfo.as_dict`), what only its
    node knows (path, date, size, interpreter) left null."""
    unknown = dict.fromkeys([field.name for field in fields(EnvInfo)] + ["python"])
    return {
        **unknown,
        "name": plan.name,
        "engine": plan.spec.engine,
        "version": plan.version,
        "platform": plan.platform,
        "locked": plan.lock is not None,
        "packages": list(plan.packages),
        "where": "cluster nodes",
        "models": models,
    }


def _users(manager: ModelManager) -> dict[str, list[str]]:
    return EngineEnvs.users((m.uid, m.env_plan) for m in manager.list())
