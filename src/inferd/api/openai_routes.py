"""OpenAI-compatible endpoints: chat, completions, embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferd.api.chat_images import inline_images
from inferd.api.deps import manager as _manager
from inferd.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferd.api.proxy import relay
from inferd.catalog import EmbeddingFamily
from inferd.errors import InvalidRequest
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager

router = APIRouter(prefix="/v1")


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = manager.lookup(body.model)
    instance.require("chat", "/v1/chat/completions")
    if body.tools and body.tool_choice != "none":
        instance.require("tools", "tool calls", param="tools")
    engine_body = body.engine_body(instance.uid)
    await inline_images(instance, engine_body, manager.settings)
    return await relay(manager, instance, "/chat/completions", engine_body, body.stream, request)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = manager.lookup(body.model)
    instance.require("generate", "/v1/completions")
    prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
    if body.stream and len(prompts) > 1 and not isinstance(prompts[0], int):
        raise InvalidRequest("a streamed completion takes a single prompt", param="prompt")
    return await relay(
        manager, instance, "/completions", body.engine_body(instance.uid), body.stream, request
    )


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = embedding_model(manager, body.model, body.dimensions)
    return await relay(
        manager, instance, "/embeddings", body.engine_body(instance.uid), stream=False
    )


def embedding_model(manager: ModelManager, model: str, dimensions: int | None) -> ModelInstance:
    """The launched model an embeddings request names, if it embeds and has the dimensions
    asked for (also asked by the API processes, `api/fronts`, before they relay one)."""
    instance = manager.lookup(model)
    instance.require("embed", "/v1/embeddings")
    family = instance.family
    if (
        dimensions is not None
        and isinstance(family, EmbeddingFamily)
        and dimensions > family.dimensions
    ):
        raise InvalidRequest(
            f"dimensions must be at most {family.dimensions} for {family.model_name}",
            param="dimensions",
        )
    return instance
