"""What route handlers take from the application."""

from __future__ import annotations

from fastapi import Request

from inferd.runtime.manager import ModelManager


def manager(request: Request) -> ModelManager:
    result: ModelManager = request.app.state.manager
    return result
