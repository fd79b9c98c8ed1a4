"""Model management in Xinference's shapes: launch, list, describe, terminate, registrations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from inferd.api.auth import check_model, visible
from inferd.api.deps import manager as _manager
from inferd.api.logs import follow_log
from inferd.catalog import AnyFamily, ModelType
from inferd.cluster.remote import RemoteModelProcess
from inferd.engines import engines_for, is_installed, vllm_supported
from inferd.errors import Conflict, InvalidRequest, NotFound
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.manager import ModelManager
from inferd.runtime.process import read_tail
from inferd.storage.resolve import VERSION_SEPARATOR, list_cache, remove_cached

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """OpenAI's model list; each entry also carries Xinference's description fields."""
    data = []
    for instance in _manager(request).list():
        if not visible(instance.uid):
            continue  # a key limited to other models does not see this one
        info = instance.describe()
        data.append({"object": "model", "owned_by": "inferd", **info})
    return {"object": "list", "data": data}


@router.post("/v1/models")
async def launch_model(
    body: LaunchRequest, request: Request, wait_ready: bool | None = None
) -> dict:
    if wait_ready is not None:  # xinference-client sends it as a query parameter
        body.wait_ready = wait_ready
    instance = await _manager(request).launch(body)
    return {"model_uid": instance.uid}


@router.post("/v1/models/{model_uid}/cancel")
async def cancel_launch(model_uid: str, request: Request) -> dict:
    manager = _manager(request)
    instance = manager.get(model_uid)
    if instance.state == "ready":
        raise InvalidRequest(
            f"{model_uid} is launched already; terminate it instead", param="model_uid"
        )
    await manager.terminate(model_uid)
    return {"model_uid": model_uid, "cancelled": True}


class AbortBody(BaseModel):
    block_duration: float = Field(default=30, ge=0, le=3600)


@router.post("/v1/models/{model_uid}/requests/{request_id}/abort")
async def abort_request(
    model_uid: str, request_id: str, request: Request, body: AbortBody | None = None
) -> dict:
    """Cancel a running request by the id its client gave it; an id that has not arrived yet
    (or already finished) is refused for `block_duration` seconds, as in Xinference."""
    check_model(model_uid)
    manager = _manager(request)
    instance = manager.get(model_uid)
    block = (body or AbortBody()).block_duration
    aborted = await manager.aborts.abort(instance, request_id, block)
    return {"model_uid": model_uid, "request_id": request_id, "aborted": aborted}


@router.get("/v1/models/instances")
async def instance_info(
    request: Request, model_name: str | None = None, model_uid: str | None = None
) -> list[dict]:
    """Xinference's instance listing: launched models, narrowed by name and/or uid."""
    return [
        instance.describe()
        for instance in _manager(request).list()
        if visible(instance.uid)
        and (model_name is None or instance.family.model_name == model_name)
        and (model_uid is None or instance.uid == model_uid)
    ]


class AddReplicas(BaseModel):
    replica: int = Field(default=1, ge=1, le=16)
    model_engine: str | None = None
    n_gpu: int | str | None = None
    replica_config: Any = None


@router.get("/v1/models/vllm-supported")
async def vllm_models(request: Request) -> dict[str, list[str]]:
    """The catalogue's LLMs that have weights vLLM loads (Xinference's `vllm_models`)."""
    return vllm_supported(_manager(request).catalog.list(ModelType.LLM))


@router.post("/v1/models/{model_uid}/replicas")
async def add_replicas(model_uid: str, body: AddReplicas, request: Request) -> dict:
    """Scale a ready model out: more processes of the same model, sharing its requests."""
    manager = _manager(request)
    instance = manager.get(model_uid)
    if body.replica_config is not None:
        raise InvalidRequest(
            "per-replica configurations are not supported: new replicas copy the model's own",
            param="replica_config",
        )
    if body.model_engine is not None and body.model_engine != instance.engine.name:
        raise InvalidRequest(
            f"{model_uid} runs on {instance.engine.name}; its replicas cannot use another engine",
            param="model_engine",
        )
    if body.n_gpu not in (None, "auto", instance.request.n_gpu):
        raise InvalidRequest(
            "new replicas are placed like the model's first one; n_gpu cannot differ",
            param="n_gpu",
        )
    added = await manager.add_replicas(model_uid, body.replica)
    return {"model_uid": model_uid, "added": added, "replicas": len(instance.replicas)}


@router.delete("/v1/models/{model_uid}/replicas/{replica_id}")
async def remove_replica(model_uid: str, replica_id: int, request: Request) -> dict:
    remaining = await _manager(request).remove_replica(model_uid, replica_id)
    return {"model_uid": model_uid, "remaining_replicas": remaining}


@router.get("/v1/models/{model_uid}")
async def describe_model(model_uid: str, request: Request) -> dict:
    manager = _manager(request)
    check_model(model_uid)
    info = manager.get(model_uid).describe()
    info["history"] = manager.store.events(model_uid, limit=20)
    # OpenAI's Model object (`client.models.retrieve`) beside Xinference's description.
    return {"object": "model", "owned_by": "inferd", **info}


@router.get("/v1/models/{model_uid}/progress")
async def launch_progress(model_uid: str, request: Request) -> dict:
    check_model(model_uid)
    return _manager(request).get(model_uid).progress()


@router.get("/v1/models/{model_uid}/progress/events")
async def launch_progress_events(model_uid: str, request: Request) -> StreamingResponse:
    """The launch's progress as server-sent events, one whenever it changes, ending when the
    model is ready, failed or gone: what a web page follows instead of polling."""
    check_model(model_uid)
    manager = _manager(request)
    instance = manager.get(model_uid)

    async def events() -> AsyncIterator[bytes]:
        last: dict | None = None
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            if manager.find(model_uid) is not instance:
                yield _event({"progress": 0.0, "stage": "terminated"})
                return
            current = instance.progress()
            if current["stage"] == "failed":
                current["error"] = instance.error_text()
            if current != last:
                yield _event(current)
                last, quiet_since = current, time.monotonic()
                if current["stage"] in ("ready", "idle", "failed"):
                    return
            elif time.monotonic() - quiet_since > 15:
                yield b": still working\n\n"  # keeps proxies from closing a quiet stream
                quiet_since = time.monotonic()
            await instance.wait_change(0.5)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


def _event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


@router.get("/v1/models/{model_uid}/logs", response_model=None)
async def model_logs(
    model_uid: str,
    request: Request,
    tail: int = Query(default=200, ge=0, le=100_000),
    replica: int = Query(default=0, ge=0),
    follow: bool = False,
) -> Response:
    """The model process's log: its last `tail` lines, then new lines as they come if `follow`."""
    check_model(model_uid)
    manager = _manager(request)
    instance = manager.get(model_uid)
    if replica >= max(instance.request.replica, 1):
        raise InvalidRequest(
            f"{model_uid} has {instance.request.replica} replica(s)", param="replica"
        )
    running = instance.replicas[replica].process if replica < len(instance.replicas) else None
    if isinstance(running, RemoteModelProcess):  # its log is on its node
        if not follow:
            return PlainTextResponse(await running.read_log(tail))
        return StreamingResponse(running.follow_log(tail), media_type="text/plain")
    path = manager.log_path(model_uid, replica)
    if not follow:
        return PlainTextResponse(read_tail(path, tail))
    return StreamingResponse(follow_log(path, tail), media_type="text/plain")


@router.delete("/v1/models/{model_uid}")
async def terminate_model(model_uid: str, request: Request) -> dict:
    await _manager(request).terminate(model_uid)
    return {"model_uid": model_uid, "terminated": True}


def _model_type(value: str) -> ModelType:
    try:
        return ModelType.parse(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="model_type") from exc


@router.get("/v1/model_registrations/{model_type}")
async def list_registrations(model_type: str, request: Request, detailed: bool = False) -> list:
    families = _manager(request).catalog.list(_model_type(model_type))
    if detailed:
        return [f.model_dump(mode="json") for f in families]
    return [{"model_name": f.model_name, "is_builtin": f.is_builtin} for f in families]


@router.get("/v1/model_registrations/{model_type}/{model_name}")
async def get_registration(model_type: str, model_name: str, request: Request) -> dict:
    family = _manager(request).catalog.get(model_name, _model_type(model_type))
    return family.model_dump(mode="json")


class Registration(BaseModel):
    model: str | dict[str, Any] = Field(description="The model definition, JSON or its text")
    persist: bool = False
    worker_ip: str | None = None


@router.post("/v1/model_registrations/{model_type}")
async def register_model(model_type: str, body: Registration, request: Request) -> dict:
    if body.worker_ip:
        raise InvalidRequest(
            "registrations are the server's and serve every node; leave worker_ip out",
            param="worker_ip",
        )
    family, ignored = _manager(request).register(_model_type(model_type), body.model, body.persist)
    return {"registered": True, "model_name": family.model_name, "ignored_fields": ignored}


@router.delete("/v1/model_registrations/{model_type}/{model_name}")
async def unregister_model(model_type: str, model_name: str, request: Request) -> dict:
    _manager(request).unregister(_model_type(model_type), model_name)
    return {"unregistered": True}


@router.get("/v1/engines/{model_name}")
async def engines_for_name(model_name: str, request: Request) -> dict:
    manager = _manager(request)
    return _engine_table(manager, manager.catalog.get(model_name))


@router.get("/v1/engines/{model_type}/{model_name}")
async def engines_for_type_and_name(model_type: str, model_name: str, request: Request) -> dict:
    manager = _manager(request)
    return _engine_table(manager, manager.catalog.get(model_name, _model_type(model_type)))


def _engine_table(manager: ModelManager, family: AnyFamily) -> dict[str, list[dict[str, Any]]]:
    """Which engine serves which spec of a model, whether it is installed here, and whether
    it runs in an environment of its own instead."""
    table: dict[str, list[dict[str, Any]]] = {}
    for spec in family.model_specs:
        for engine in engines_for(family.model_type, spec.model_format):
            own = manager.engine_envs.own_env(engine)
            reason = None if own is not None else engine.unusable_here()
            table.setdefault(engine.name, []).append(
                {
                    "model_format": spec.model_format,
                    "model_size_in_billions": spec.model_size_in_billions,
                    "quantizations": spec.quantizations,
                    "installed": is_installed(engine),
                    "usable": reason is None,
                    "reason": reason,
                    "engine_env": own or "current",
                }
            )
    return table


@router.delete("/v1/cache/models")
async def remove_cached_model(
    request: Request,
    model_name: str | None = Query(default=None, min_length=1),
    model_version: str | None = Query(default=None, min_length=1),
) -> dict:
    """Free a model's cached files: every variant by `model_name`, or one by `model_version`
    (as `GET /v1/cache/models` names it, and Xinference's client sends)."""
    manager = _manager(request)
    name = model_name or _split_version(model_version)[0]
    users = [m.uid for m in manager.list() if m.family.model_name == name]
    if users:
        raise Conflict(
            f"{name} is in use by {', '.join(users)}; terminate it first",
            param="model_name" if model_name else "model_version",
        )
    cache = manager.settings.cache_dir
    if model_name:
        removed, freed = await asyncio.to_thread(remove_cached, cache, model_name)
    else:
        removed, freed = await asyncio.to_thread(
            remove_cached, cache, *_split_version(model_version)
        )
    if not removed:
        raise NotFound(
            f"nothing of {model_name or model_version!r} is in the cache",
            param="model_name" if model_name else "model_version",
        )
    return {"result": True, "removed": removed, "freed_bytes": freed}


@router.get("/v1/cache/models/files")
async def cached_files(request: Request, model_version: str = Query(min_length=1)) -> dict:
    """The files removing `model_version` would delete (Xinference's list_deletable_models)."""
    cache = _manager(request).settings.cache_dir
    name, _ = _split_version(model_version)
    entries = await asyncio.to_thread(list_cache, cache, name)
    paths = [e["files"] for e in entries if e["model_version"] == model_version]
    if not paths:
        raise NotFound(f"{model_version!r} is not in the cache", param="model_version")
    return {"model_version": model_version, "paths": paths[0]}


def _split_version(model_version: str | None) -> tuple[str, str]:
    name, sep, variant = (model_version or "").partition(VERSION_SEPARATOR)
    if not sep or not name or not variant:
        raise InvalidRequest(
            "give model_name, or a model_version as `GET /v1/cache/models` lists it "
            f"(NAME{VERSION_SEPARATOR}VARIANT)",
            param="model_version",
        )
    return name, variant


@router.get("/v1/cache/models")
async def cached_models(request: Request, model_name: str | None = None) -> dict:
    settings = _manager(request).settings
    entries = await asyncio.to_thread(list_cache, settings.cache_dir, model_name)
    for entry in entries:
        entry.pop("files")
    return {"list": entries}


@router.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok", "uptime": round(time.time() - request.app.state.started, 3)}
