"""Model management in Xinference's shapes: launch, list, describe, terminate, registrations."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from inferd.api.deps import manager as _manager
from inferd.api.logs import follow_log, read_tail
from inferd.catalog import ModelType, get_catalog
from inferd.errors import InvalidRequest
from inferd.runtime.launch import LaunchRequest

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """OpenAI's model list; each entry also carries Xinference's description fields."""
    data = []
    for instance in _manager(request).list():
        info = instance.describe()
        data.append({"object": "model", "owned_by": "inferd", **info})
    return {"object": "list", "data": data}


@router.post("/v1/models")
async def launch_model(body: LaunchRequest, request: Request) -> dict:
    instance = await _manager(request).launch(body)
    return {"model_uid": instance.uid}


@router.get("/v1/models/{model_uid}")
async def describe_model(model_uid: str, request: Request) -> dict:
    manager = _manager(request)
    info = manager.get(model_uid).describe()
    info["history"] = manager.store.events(model_uid, limit=20)
    return info


@router.get("/v1/models/{model_uid}/progress")
async def launch_progress(model_uid: str, request: Request) -> dict:
    return _manager(request).get(model_uid).progress()


@router.get("/v1/models/{model_uid}/logs", response_model=None)
async def model_logs(
    model_uid: str,
    request: Request,
    tail: int = Query(default=200, ge=0, le=100_000),
    replica: int = Query(default=0, ge=0),
    follow: bool = False,
) -> Response:
    """The model process's log: its last `tail` lines, then new lines as they come if `follow`."""
    manager = _manager(request)
    instance = manager.get(model_uid)
    if replica >= max(instance.request.replica, 1):
        raise InvalidRequest(
            f"{model_uid} has {instance.request.replica} replica(s)", param="replica"
        )
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
async def list_registrations(model_type: str, detailed: bool = False) -> list[dict]:
    families = get_catalog().list(_model_type(model_type))
    if detailed:
        return [f.model_dump(mode="json") for f in families]
    return [{"model_name": f.model_name, "is_builtin": f.is_builtin} for f in families]


@router.get("/v1/model_registrations/{model_type}/{model_name}")
async def get_registration(model_type: str, model_name: str) -> dict:
    return get_catalog().get(model_name, _model_type(model_type)).model_dump(mode="json")


@router.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok", "uptime": round(time.time() - request.app.state.started, 3)}
