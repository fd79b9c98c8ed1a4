"""Every error leaves the server in OpenAI's shape, {"error": {message, type, param, code}}, but
on Ollama's paths (a plain string) and Anthropic's (`{"type": "error", "error": {type, message}}`),
whose clients read their own."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from inferd.errors import InferdError

log = logging.getLogger("inferd.api")

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_response(
    status: int,
    message: str,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
) -> Response:
    body: dict[str, Any]
    path = request.url.path if request is not None else ""
    if path.startswith("/api/"):
        body = {"error": message}  # Ollama's clients read a plain string
    elif path.startswith("/v1/messages"):
        # Anthropic's SDK reads the kind of error from its own names, by status.
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else error_type)
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        # `detail` is where Xinference's clients look for the message; OpenAI's read `error`.
        body = {
            "error": {"message": message, "type": error_type, "param": param, "code": code},
            "detail": message,
        }
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def param_name(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    parts = [p for p in loc if p != "body"]
    name = ""
    for part in parts:
        if isinstance(part, int):
            name += f"[{part}]"
        elif _is_union_branch(str(part)):
            continue
        else:
            name += f".{part}" if name else str(part)
    return name or None


def _is_union_branch(part: str) -> bool:
    """pydantic names the branch of a union it tried ('str', "literal['a','b']",
    'NamedToolChoice', 'function-after[...]'); the user's field is what matters. API fields are
    lower-case words, so anything else is a branch name."""
    return (
        part in ("str", "int", "float", "bool")
        or not part.replace("_", "").islower()
        or any(c in part for c in "[(-")
    )


def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        reason = ctx.get("error", first["msg"]) if isinstance(ctx, dict) else first["msg"]
        return error_response(
            400,
            f"the request body is not valid JSON: {reason}",
            "invalid_request_error",
            code="invalid_json",
            request=request,
        )
    param = param_name(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"'{param}' is required"
    elif param:
        got = first.get("input")
        shown = _shown(got)
        message = f"invalid '{param}': {message} (got {shown})"
    return error_response(
        400, message, "invalid_request_error", param, "invalid_value", request=request
    )


def _shown(value: object) -> str:
    """A short rendering of the value a client sent, for the message."""
    if value is None:
        return "null"
    try:
        return orjson.dumps(value, default=str).decode()[:100]
    except orjson.JSONEncodeError:  # integers past 64 bits, which orjson will not write
        return repr(value)[:100]


def _inferd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InferdError)
    headers: dict[str, str] = {}
    if exc.status_code == 503:
        headers["Retry-After"] = "5"
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if exc.status_code == 413:
        headers["Connection"] = "close"  # the rest of the body is not worth reading
    return error_response(
        exc.status_code,
        exc.message,
        exc.error_type,
        exc.param,
        exc.code,
        headers=headers or None,
        request=request,
    )


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed"}
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return error_response(
        exc.status_code,
        message,
        "invalid_request_error" if exc.status_code < 500 else "server_error",
        code=kinds.get(exc.status_code),
        request=request,
    )


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        500, f"internal error: {type(exc).__name__}: {exc}", "server_error", request=request
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InferdError, _inferd_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def refuse(scope: dict, receive: Any, send: Any, exc: InferdError) -> None:
    """Answer an ASGI request with `exc`, from a middleware that runs before any route."""
    await _inferd_error(Request(scope), exc)(scope, receive, send)
