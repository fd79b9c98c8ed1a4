"""The app a front process serves: embeddings and rerank relayed by itself, the rest passed on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from inferd.api.checks import install_checks
from inferd.api.fronts.forward import ToServer
from inferd.api.fronts.grants import Grants
from inferd.api.fronts.relay import ModelSockets, relay_whole
from inferd.api.protocol import EmbeddingRequest, RerankRequest
from inferd.api.wrong_keys import WrongKeys
from inferd.runtime.heap import freeze_startup_heap
from inferd.settings import Settings

# The paths a front answers itself (POST only); everything else goes to the server.
OWN_PATHS = frozenset(("/v1/embeddings", "/v1/rerank"))


def create_front_app(settings: Settings, control: str, server: str) -> FrontApp:
    """`control`: the server's socket for slots; `server`: its socket for everything else."""
    to_server = ToServer(server)
    wrong_keys = WrongKeys()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grants = Grants(control, wrong_keys)
        await grants.connect()
        wrong_keys.on_wrong = grants.wrong_key
        app.state.grants = grants
        app.state.sockets = ModelSockets()
        freeze_startup_heap()
        try:
            yield
        finally:
            await grants.close()
            await app.state.sockets.close()
            await to_server.close()

    own = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    own.state.settings = settings
    own.state.to_server = to_server
    install_checks(own, settings, wrong_keys)

    @own.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        engine_body = body.engine_body(body.model)
        return await relay_whole(
            request, "embeddings", "/embeddings", engine_body, dimensions=body.dimensions
        )

    @own.post("/v1/rerank")
    async def rerank(body: RerankRequest, request: Request) -> Response:
        return await relay_whole(request, "rerank", "/rerank", body.engine_body(body.model))

    return FrontApp(own, to_server)


class FrontApp:
    """Sends each request to the app that answers it: `own` (which also runs the lifespan)
    for the paths a front relays itself, `to_server` for the rest."""

    def __init__(self, own: FastAPI, to_server: ToServer):
        self.own, self.to_server = own, to_server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in OWN_PATHS
        ):
            await self.own(scope, receive, send)
        else:
            await self.to_server(scope, receive, send)
