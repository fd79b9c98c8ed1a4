"""Xinference endpoints inferd deliberately does not offer, each answering why and what to do
instead, so a script written for Xinference fails with a reason rather than a bare 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter

from inferd.errors import NotFound, UnsupportedOperation

router = APIRouter()

_RESTORE = (
    "inferd has no separate autostart list: every launched model comes back when the server "
    "restarts (`inferd serve --no-restore` starts with none); terminate a model to keep it from "
    "coming back"
)
_RELAUNCH = (
    "inferd does not relaunch itself under another Python; restart `inferd serve` instead, and "
    "the launched models come back with the same uids"
)
_RELOAD = (
    "inferd does not reload a model in place; terminate it and launch it again with the new "
    "settings (the same model_uid can be given again)"
)

_REFUSED: list[tuple[str, str, str, str]] = [
    # (method, path, message, the parameter at fault)
    (
        "DELETE",
        "/v1/clusters",
        "inferd does not shut down through its API; stop `inferd serve` with Ctrl-C or SIGTERM "
        "(launched models come back at the next start)",
        "cluster",
    ),
    ("GET", "/v1/autostart/models", _RESTORE, "autostart"),
    ("POST", "/v1/autostart/models", _RESTORE, "autostart"),
    ("GET", "/v1/autostart/models/summary", _RESTORE, "autostart"),
    ("DELETE", "/v1/autostart/models/{model_uid}", _RESTORE, "autostart"),
    ("POST", "/v1/api/relaunch", _RELAUNCH, "python_executable"),
    ("POST", "/v1/supervisor/relaunch", _RELAUNCH, "python_executable"),
    ("POST", "/v1/workers/{worker_address}/relaunch", _RELAUNCH, "python_executable"),
    ("GET", "/v1/api-relaunches", _RELAUNCH, "operation_id"),
    ("GET", "/v1/api-relaunches/{operation_id}", _RELAUNCH, "operation_id"),
    ("GET", "/v1/supervisor-relaunches", _RELAUNCH, "operation_id"),
    ("GET", "/v1/supervisor-relaunches/{operation_id}", _RELAUNCH, "operation_id"),
    ("GET", "/v1/worker-relaunches", _RELAUNCH, "operation_id"),
    ("GET", "/v1/worker-relaunches/{operation_id}", _RELAUNCH, "operation_id"),
    ("POST", "/v1/models/{model_uid}/reload", _RELOAD, "model_config"),
    ("GET", "/v1/models/{model_uid}/reload", _RELOAD, "model_config"),
    ("GET", "/v1/models/{model_uid}/reload/config", _RELOAD, "model_config"),
    (
        "POST",
        "/token",
        "inferd has API keys, not user names and passwords: give the key to the client "
        "(RESTfulClient(url, api_key=KEY), or 'Authorization: Bearer KEY'); `inferd keys create` "
        "makes one, and without `inferd serve --auth` none is needed",
        "username",
    ),
]


def _refuse(message: str, param: str) -> Callable[[], Awaitable[None]]:
    async def endpoint() -> None:
        raise UnsupportedOperation(message, param=param)

    return endpoint


for _method, _path, _message, _param in _REFUSED:
    router.add_api_route(
        _path, _refuse(_message, _param), methods=[_method], include_in_schema=False
    )


@router.get("/v1/requests/{request_id}/progress", include_in_schema=False)
async def request_progress(request_id: str) -> None:
    raise NotFound(
        f"no progress is tracked for request {request_id!r}: inferd reports progress for "
        "launches (GET /v1/models/UID/progress), not for the steps of one image request",
        param="request_id",
    )
