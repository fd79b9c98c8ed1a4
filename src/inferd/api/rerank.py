"""Rerank: documents scored against a query, for Xinference's, Jina's and Cohere's clients."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferd.api.deps import manager as _manager
from inferd.api.protocol import RerankRequest
from inferd.api.proxy import relay

router = APIRouter()


@router.post("/v1/rerank")
async def rerank(body: RerankRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = manager.lookup(body.model)
    instance.require("rerank", "/v1/rerank")
    return await relay(manager, instance, "/rerank", body.engine_body(instance.uid), stream=False)
