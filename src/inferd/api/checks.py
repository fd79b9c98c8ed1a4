"""What every request meets before its route, in the server and in its front processes alike:
errors in the shape of the API called, the key, the content type, the size of the body."""

from __future__ import annotations

from fastapi import FastAPI

from inferd.api.auth import AuthMiddleware
from inferd.api.content_type import JsonBodies
from inferd.api.errors import install_error_handlers
from inferd.api.limits import BodyLimit
from inferd.api.wrong_keys import WrongKeys
from inferd.settings import Settings


def install_checks(app: FastAPI, settings: Settings, wrong_keys: WrongKeys) -> None:
    """`wrong_keys`: this process's count of clients' wrong keys (used with `--auth`)."""
    install_error_handlers(app)
    if settings.auth:
        app.add_middleware(AuthMiddleware, state_db=settings.state_db, wrong_keys=wrong_keys)
    app.add_middleware(JsonBodies)
    # Added last, so it runs first: an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_mb << 20)
