"""OpenAI's audio endpoints: transcriptions and translations (speech to text), speech (text to
speech). Uploads arrive as forms and travel to the model process as base64 in JSON."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from inferd.api.deps import manager as _manager
from inferd.api.proxy import relay
from inferd.errors import InvalidRequest

router = APIRouter(prefix="/v1/audio")

MAX_UPLOAD = 100 * 1024 * 1024
_TEXT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


@router.post("/transcriptions")
async def transcriptions(
    request: Request,
    file: UploadFile,
    model: str = Form(min_length=1),
    language: str | None = Form(default=None),
    prompt: str | None = Form(default=None),
    response_format: str = Form(default="json"),
    temperature: float = Form(default=0.0, ge=0, le=1),
    timestamp_granularities: Annotated[
        list[str] | None, Form(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    return await _recognise(
        request,
        "transcribe",
        file,
        model,
        language,
        prompt,
        response_format,
        temperature,
        timestamp_granularities or [],
    )


@router.post("/translations")
async def translations(
    request: Request,
    file: UploadFile,
    model: str = Form(min_length=1),
    prompt: str | None = Form(default=None),
    response_format: str = Form(default="json"),
    temperature: float = Form(default=0.0, ge=0, le=1),
) -> Response:
    """Speech in any language, as English text (Whisper's translate task)."""
    return await _recognise(
        request, "translate", file, model, None, prompt, response_format, temperature, []
    )


async def _recognise(
    request: Request,
    task: str,
    file: UploadFile,
    model: str,
    language: str | None,
    prompt: str | None,
    response_format: str,
    temperature: float,
    granularities: list[str],
) -> Response:
    if response_format not in _TEXT_FORMATS:
        raise InvalidRequest(
            f"response_format must be one of {', '.join(_TEXT_FORMATS)}", param="response_format"
        )
    if any(g not in ("word", "segment") for g in granularities):
        raise InvalidRequest(
            "timestamp_granularities holds 'word' and/or 'segment'", param="timestamp_granularities"
        )
    manager = _manager(request)
    instance = manager.lookup(model)
    endpoint = "/v1/audio/transcriptions" if task == "transcribe" else "/v1/audio/translations"
    instance.require("audio2text", endpoint)
    audio = await file.read(MAX_UPLOAD + 1)
    if not audio:
        raise InvalidRequest("the uploaded file is empty", param="file")
    if len(audio) > MAX_UPLOAD:
        raise InvalidRequest(f"the file is larger than {MAX_UPLOAD // 2**20} MB", param="file")
    body = {
        "model": instance.uid,
        "audio": base64.b64encode(audio).decode("ascii"),
        "task": task,
        "language": language,
        "prompt": prompt,
        "temperature": temperature,
        "timestamp_granularities": granularities,
    }
    answer = await relay(manager, instance, "/audio/transcriptions", body, stream=False)
    if answer.status_code != 200:
        return answer
    return _as_format(orjson.loads(bytes(answer.body)), response_format)


def _as_format(result: dict, response_format: str) -> Response:
    if response_format == "verbose_json":
        return Response(orjson.dumps(result), media_type="application/json")
    if response_format == "json":
        return Response(orjson.dumps({"text": result["text"]}), media_type="application/json")
    if response_format == "text":
        return Response(result["text"] + "\n", media_type="text/plain; charset=utf-8")
    vtt = response_format == "vtt"
    lines = ["WEBVTT", ""] if vtt else []
    for n, segment in enumerate(result["segments"], start=1):
        start, end = _stamp(segment["start"], vtt), _stamp(segment["end"], vtt)
        lines += ([] if vtt else [str(n)]) + [f"{start} --> {end}", segment["text"].strip(), ""]
    media_type = "text/vtt" if vtt else "application/x-subrip"
    return Response("\n".join(lines), media_type=f"{media_type}; charset=utf-8")


def _stamp(seconds: float, vtt: bool) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{'.' if vtt else ','}{millis:03d}"


# OpenAI's SDK requires a voice and tools send one of these by default; to a one-voice model
# they all mean its voice.
_OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)


class SpeechRequest(BaseModel):
    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=4096)
    voice: str | None = None
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream: bool = False


@router.post("/speech")
async def speech(body: SpeechRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = manager.lookup(body.model)
    instance.require("text2audio", "/v1/audio/speech")
    if body.stream:
        raise InvalidRequest(
            "streamed speech is not supported; the whole file is returned", param="stream"
        )
    if body.voice not in (None, "", "default", instance.family.model_name, *_OPENAI_VOICES):
        raise InvalidRequest(
            f"{instance.uid} speaks with one voice, {instance.family.model_name!r} ('default'); "
            "launch another voice model for another voice",
            param="voice",
        )
    payload = body.model_dump(exclude={"stream"})
    payload["model"] = instance.uid
    return await relay(manager, instance, "/audio/speech", payload, stream=False)
