"""API keys over HTTP, for admins: the same as `inferd keys` on the server's machine."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from inferd.api.auth import require_admin
from inferd.api.deps import manager as _manager
from inferd.errors import Conflict, NotFound
from inferd.storage.state import KEY_NAME

router = APIRouter(prefix="/v1/keys")


class NewKey(BaseModel):
    name: str = Field(pattern=f"^{KEY_NAME}$")
    admin: bool = False
    models: list[str] | None = Field(default=None, description="Model uids; none: every model")
    expires_days: float | None = Field(default=None, gt=0)


@router.get("")
async def list_keys(request: Request) -> list[dict]:
    require_admin()
    return _manager(request).store.api_keys()


@router.post("")
async def create_key(body: NewKey, request: Request) -> dict:
    """A new key; its secret is in this answer and nowhere else."""
    require_admin()
    expires = time.time() + body.expires_days * 86400 if body.expires_days else None
    try:
        secret = _manager(request).store.create_key(body.name, body.admin, body.models, expires)
    except ValueError as exc:
        raise Conflict(str(exc), param="name") from None
    return {"name": body.name, "key": secret, "admin": body.admin, "models": body.models}


@router.delete("/{name}")
async def revoke_key(name: str, request: Request) -> dict:
    require_admin()
    if not _manager(request).store.revoke_key(name):
        raise NotFound(f"no key named {name!r}", param="name")
    return {"revoked": name}
