"""OpenAI's image generation endpoint, and the options Xinference's client sends with it."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError, field_validator

from inferd.api.deps import manager as _manager
from inferd.api.proxy import relay
from inferd.catalog import ImageFamily
from inferd.errors import InvalidRequest

router = APIRouter(prefix="/v1/images")

_SIZE = re.compile(r"^(\d+)[x*](\d+)$")
# What a request may set beyond OpenAI's fields; Xinference's client sends them in `kwargs`.
_OPTIONS = {"negative_prompt", "seed", "num_inference_steps", "guidance_scale"}


class ImageRequest(BaseModel):
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = None
    response_format: Literal["url", "b64_json"] = "b64_json"
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    kwargs: str | dict[str, Any] | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = _SIZE.match(value)
        if not match:
            raise ValueError("size is WIDTHxHEIGHT, e.g. 512x512")
        width, height = int(match[1]), int(match[2])
        if not (64 <= width <= 2048 and 64 <= height <= 2048) or width % 8 or height % 8:
            raise ValueError("width and height are multiples of 8 from 64 to 2048")
        return f"{width}x{height}"


@router.post("/generations")
async def generations(body: ImageRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = manager.lookup(body.model)
    instance.require("text2image", "/v1/images/generations")
    payload = body.model_dump(exclude={"kwargs"}, exclude_none=True)
    payload.update(_options(body.kwargs))
    payload["model"] = instance.uid
    family = instance.family
    assert isinstance(family, ImageFamily)
    payload.setdefault("size", family.default_size)
    return await relay(manager, instance, "/images/generations", payload, stream=False)


def _options(kwargs: str | dict[str, Any] | None) -> dict[str, Any]:
    """Xinference's `kwargs` (a JSON string): the pipeline options inferd passes on."""
    if not kwargs:
        return {}
    try:
        options = json.loads(kwargs) if isinstance(kwargs, str) else kwargs
    except ValueError as exc:
        raise InvalidRequest(f"kwargs is not JSON: {exc}", param="kwargs") from exc
    if not isinstance(options, dict):
        raise InvalidRequest("kwargs must be a JSON object", param="kwargs")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise InvalidRequest(
            f"unsupported image option(s) {', '.join(unknown)}; inferd takes "
            f"{', '.join(sorted(_OPTIONS))}",
            param="kwargs",
        )
    try:
        checked = ImageRequest.model_validate({"model": "-", "prompt": "-", **options})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidRequest(f"kwargs.{where}: {first['msg']}", param="kwargs") from exc
    return checked.model_dump(include=set(options), exclude_none=True)
