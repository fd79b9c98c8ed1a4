"""Rerank: documents scored against a query, for Xinference's, Jina's and Cohere's clients."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferd.api.deps import manager as _manager
from inferd.api.protocol import RerankRequest
from inferd.api.proxy import relay
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager

router = APIRouter()


@router.post("/v1/rerank")
async def rerank(body: RerankRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = rerank_model(manager, body.model)
    return await relay(manager, instance, "/rerank", body.engine_body(instance.uid), stream=False)


def rerank_model(manager: ModelManager, model: str) -> ModelInstance:
    """The launched model a rerank request names, if it ranks (also asked by the API
    processes, `api/fronts`, before they relay one)."""
    instance = manager.lookup(model)
    instance.require("rerank", "/v1/rerank")
    return instance
