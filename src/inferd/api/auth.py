"""API keys: who may call what, when `inferd serve --auth` turns them on.

Every request but the health check and the web page's files carries a key, as
`Authorization: Bearer KEY` (what OpenAI's and Xinference's clients send) or `x-api-key: KEY`.
Admin keys may do anything; other keys may only use models (inference, reading their state,
aborting their requests), and a key limited to some models sees and uses only those. A client
that keeps sending wrong keys is refused for a while, whatever it sends.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.api.errors import refuse
from inferd.api.wrong_keys import WrongKeys
from inferd.errors import Forbidden, InferdError, TooManyRequests, Unauthorized
from inferd.storage.state import StateStore

# Paths anyone may read: the health check, the web page (it asks for a key itself), and
# whether a key is needed at all (Xinference's clients ask before logging in).
_OPEN = re.compile(r"^/(health|ui/.*|v1/cluster/auth|docs|openapi\.json)?$")
# What a key that is not an admin's may still POST: using a model, not changing the server.
_USE = re.compile(
    r"^/(v1/(chat/completions|completions|embeddings|rerank|audio/\w+|images/\w+"
    r"|models/[^/]+/requests/[^/]+/abort)|api/(chat|generate|embed|embeddings|show))$"
)


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool
    models: frozenset[str] | None  # None: every model

    def may_use(self, uid: str) -> bool:
        return self.admin or self.models is None or uid in self.models


_PRINCIPAL: ContextVar[Principal | None] = ContextVar("inferd_principal", default=None)


def check_model(uid: str, principal: Principal | None = None) -> None:
    """Refuse (403) a request for a model the caller's key is not for; a no-op without auth.
    `principal`: the caller, where it was checked in another process (an API process)."""
    principal = principal or _PRINCIPAL.get()
    if principal is not None and not principal.may_use(uid):
        raise Forbidden(f"key {principal.name!r} may not use model {uid!r}", param="model")


def caller() -> Principal | None:
    """The key the current request came with; None without auth."""
    return _PRINCIPAL.get()


def require_admin() -> None:
    principal = _PRINCIPAL.get()
    if principal is not None and not principal.admin:
        raise Forbidden(f"key {principal.name!r} is not an admin key", param="authorization")


def visible(uid: str) -> bool:
    principal = _PRINCIPAL.get()
    return principal is None or principal.may_use(uid)


class AuthMiddleware:
    """Checks the key of every HTTP request before the app sees it."""

    def __init__(self, app: Any, state_db: Path, wrong_keys: WrongKeys):
        self.app = app
        self.state_db = state_db
        self._store: StateStore | None = None
        self.wrong_keys = wrong_keys

    @property
    def store(self) -> StateStore:
        # Its own connection to the state store, opened on the first request: keys made by
        # `inferd keys create` in another process are seen at once.
        if self._store is None:
            self._store = StateStore(self.state_db)
        return self._store

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (_OPEN.match(scope["path"]) and ".." not in scope["path"]):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        try:
            principal = self._authenticate(scope, client)
            changes = scope["method"] not in ("GET", "HEAD") and not _USE.match(scope["path"])
            if changes and not principal.admin:
                raise Forbidden(
                    f"key {principal.name!r} is not an admin key: it may use models but not "
                    "launch, stop, register or manage them",
                    param="authorization",
                )
        except InferdError as exc:
            await refuse(scope, receive, send, exc)
            return
        token = _PRINCIPAL.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            _PRINCIPAL.reset(token)

    def _authenticate(self, scope: dict, client: str) -> Principal:
        retry = self.wrong_keys.retry_after(client)
        if retry is not None:
            raise TooManyRequests(
                f"too many wrong API keys from {client}; try again in {retry} s",
                retry_after=retry,
            )
        secret = _key_of(scope)
        if secret is None:
            raise Unauthorized(
                "this server needs an API key: send it as 'Authorization: Bearer KEY' "
                "(`inferd keys create` makes one on the server's machine)",
                param="authorization",
            )
        key = self.store.key_for(secret)
        if key is None:
            self.wrong_keys.record(client)
            raise Unauthorized("the API key is not valid (unknown, revoked or expired)")
        models = key["models"]
        return Principal(key["name"], key["admin"], frozenset(models) if models else None)


def _key_of(scope: dict) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return str(value.decode("latin-1")).strip()
    return None
