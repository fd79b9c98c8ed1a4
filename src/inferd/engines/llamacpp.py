"""GGUF models on llama.cpp, through xllamacpp's in-process server (slots, batching, caching):
LLMs, and rerankers (a classification head over each query-document pair)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from inferd.engines import forced_calls, reasoning
from inferd.engines.base import Engine, Json, json_output, with_stops
from inferd.engines.ranking import rerank_response
from inferd.engines.thread_stream import Put, from_thread
from inferd.errors import InferdError, InvalidRequest, UnsupportedOperation

log = logging.getLogger(__name__)

# Per-slot context when the launch names none: the catalogue's context length can be 128k,
# whose KV cache would not fit in a small machine's memory for every slot.
_DEFAULT_SLOT_CONTEXT = 8192
_DEFAULT_SLOTS = 4


def _prompt_cache_mib() -> int:
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(256, min(8192, total // 16 >> 20))


def _say_if_the_gpu_goes_unused(devices: list[dict[str, Any]]) -> None:
    """Warns, in the model's log, where this process was given GPUs but llama.cpp sees none
    (`devices`, its backends' devices): its build has no GPU backend (xllamacpp's wheels on PyPI
    are CPU builds), so the layers asked of a GPU stay on the CPU, slowly, while the GPU is
    counted as this model's."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not given or given == "-1":
        return
    if any(device["type"].name.endswith(("_GPU", "_IGPU")) for device in devices):
        return
    from importlib.metadata import version

    log.warning(
        "given GPU %s, but this llama.cpp build (xllamacpp %s) has no GPU backend: the model "
        "runs on the CPU. Install xllamacpp's CUDA build (from its own wheel index) to use the "
        "GPU, or launch with --n-gpu 0 to leave the GPU to other models",
        given,
        version("xllamacpp"),
    )


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    model_types = frozenset({"LLM", "rerank"})
    formats = frozenset({"ggufv2"})
    requires = ("xllamacpp",)
    extra = "llamacpp"
    cpu_options = {"n_gpu_layers": 0}

    @classmethod
    def context_window(cls, context_length: int, options: Json) -> int | None:
        return int(options.get("n_ctx", min(context_length, _DEFAULT_SLOT_CONTEXT)))

    def load(self) -> None:
        import xllamacpp

        options = dict(self.config.options)
        family = self.config.family
        slots = int(options.pop("n_parallel", _DEFAULT_SLOTS))
        slot_context = self.context_window(family.get("context_length", 4096), options) or 0
        options.pop("n_ctx", None)
        if slots < 1 or slot_context < 16:
            raise InvalidRequest("n_parallel must be >= 1 and n_ctx >= 16", param="n_ctx")

        params = xllamacpp.CommonParams()
        params.model.path = self.config.model_path
        params.model_alias = {self.config.model_uid}
        params.n_parallel = slots
        self._slots = slots
        params.n_ctx = slot_context * slots
        params.cpuparams.n_threads = int(options.pop("n_threads", os.cpu_count() or 1))
        thinking = options.pop("enable_thinking", None)
        params.n_gpu_layers = int(options.pop("n_gpu_layers", -1))
        if params.n_gpu_layers != 0:
            _say_if_the_gpu_goes_unused(xllamacpp.get_device_info())
        params.endpoint_metrics = True
        # llama.cpp keeps finished prompts' states in RAM to reuse them (8 GiB by default);
        # a sixteenth of the machine's memory keeps that from surprising a small machine.
        params.cache_ram_mib = int(options.pop("cache_ram_mib", _prompt_cache_mib()))
        self._ranks = self.config.model_type == "rerank"
        if self._ranks:
            params.embedding = True
            params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
        params.use_jinja = True
        # llama.cpp also listens on a loopback port; a per-process key keeps other local users
        # off it, since it bypasses inferd's own checks.
        self._key = secrets.token_urlsafe(24)
        params.api_keys = [self._key]
        if family.get("chat_template"):
            params.chat_template = family["chat_template"]
        # The vision projector the launch resolved beside the weights (multimodal_projectors).
        projector = options.pop("mmproj", None)
        self._sees_images = projector is not None
        if projector is not None:
            params.mmproj.path = str(projector)
        for key, value in options.items():
            if not hasattr(params, key):
                raise InvalidRequest(f"unknown llama.cpp option {key!r}", param=key)
            setattr(params, key, value)

        self._stops: list[str] = list(family.get("stop") or [])
        self._tags = reasoning.tags_of(family)
        self._template_kwargs: Json = {}
        if thinking is not None or self._tags is not None:
            # llama.cpp renders templates it does not know with thinking off unless told.
            self._template_kwargs["enable_thinking"] = bool(True if thinking is None else thinking)
        self._opens = {True: False, False: False}
        # Every request blocks one thread inside llama.cpp (which releases the GIL); the server
        # queues what its slots cannot take, so the pool only has to exceed the slots.
        self._pool = ThreadPoolExecutor(max_workers=max(32, slots * 4), thread_name_prefix="llama")
        self._server = xllamacpp.Server(params)
        # Whole answers go through llama.cpp's own HTTP server rather than the in-process call:
        # only there does a closed connection cancel the generation (the in-process call cannot
        # be stopped), which is what makes abort and a client giving up free the slot.
        self._http = httpx.AsyncClient(
            base_url=self._server.listening_address,
            headers={"Authorization": f"Bearer {self._key}"},
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=slots * 2),
        )

    async def start(self) -> None:
        if self._tags is not None:
            for on in (True, False):
                self._opens[on] = await self._prompt_opens_thinking(on)

    async def _prompt_opens_thinking(self, on: bool) -> bool:
        """Whether the template leaves the answer inside the thinking block (Qwen3's thinking
        models, DeepSeek-R1 write the start tag into the prompt), with thinking on or off."""
        assert self._tags is not None
        body = {
            "messages": [{"role": "user", "content": "Hello"}],
            "chat_template_kwargs": {"enable_thinking": on},
        }
        try:
            response = await self._http.post("/apply-template", json=body, timeout=30.0)
            prompt = str(response.json().get("prompt") or "")
        except (httpx.HTTPError, ValueError, AttributeError):
            return False  # no template to ask: the answer shows whether it thinks
        return reasoning.opens(prompt, self._tags)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def slots(self) -> int:
        return self._slots

    async def metrics(self) -> bytes | None:
        """llama.cpp's own figures: tokens/s, requests processing and deferred, KV-cache use."""
        try:
            response = await self._http.get("/metrics", timeout=5.0)
        except httpx.HTTPError:
            return None
        return response.content if response.status_code == 200 else None

    async def chat(self, request: Json) -> Json:
        if not self._sees_images:
            _refuse_images(request)
        if forced_calls.forced(request):
            constrained = forced_calls.constrain(request)
            return forced_calls.as_calls(await self._call("/v1/chat/completions", constrained))
        answer = await self._call("/v1/chat/completions", request)
        if request.get("parallel_tool_calls") is False:
            for choice in answer.get("choices") or []:
                calls = (choice.get("message") or {}).get("tool_calls") or []
                if len(calls) > 1:
                    choice["message"]["tool_calls"] = calls[:1]
                    choice["finish_reason"] = "tool_calls"
        # JSON output is grammar-shaped from its first token: it leaves no room to think.
        if self._tags is not None and not json_output(request):
            answer = reasoning.split_answer(answer, self._tags, self._opens[self._thinks(request)])
        return answer

    def chat_stream(self, request: Json) -> AsyncIterator[Json]:
        if not self._sees_images:
            _refuse_images(request)
        if forced_calls.forced(request):
            constrained = forced_calls.constrain(request)
            chunks = self._stream(self._server.handle_chat_completions, constrained)
            return forced_calls.stream_as_calls(chunks)
        chunks = self._stream(self._server.handle_chat_completions, request)
        if request.get("parallel_tool_calls") is False:
            chunks = _one_call(chunks)
        if self._tags is not None and not json_output(request):
            opened = self._opens[self._thinks(request)]
            chunks = reasoning.split_chunks(chunks, self._tags, opened)
        return chunks

    def _thinks(self, request: Json) -> bool:
        return reasoning.thinking(request, self._template_kwargs.get("enable_thinking", True))

    async def complete(self, request: Json) -> Json:
        return await self._call("/v1/completions", request)

    def complete_stream(self, request: Json) -> AsyncIterator[Json]:
        return self._stream(self._server.handle_completions, request)

    def _prepare(self, request: Json, stream: bool) -> Json:
        request = with_stops(request, self._stops)
        request["stream"] = stream
        if self._template_kwargs:
            request["chat_template_kwargs"] = {
                **self._template_kwargs,
                **(request.get("chat_template_kwargs") or {}),
            }
        return request

    async def rerank(self, request: Json) -> Json:
        if not self._ranks:
            raise self._unsupported("rerank")
        body = {"query": request["query"], "documents": request["documents"]}
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._pool, self._server.handle_rerank, body)
        _raise_if_error(result)
        scores = [0.0] * len(request["documents"])
        for item in result["results"]:
            scores[item["index"]] = float(item["relevance_score"])
        tokens = int((result.get("usage") or {}).get("prompt_tokens", 0))
        return rerank_response(self.config.model_uid, request, scores, tokens)

    async def _call(self, path: str, request: Json) -> Json:
        response = await self._http.post(path, json=self._prepare(request, stream=False))
        try:
            result: Json = response.json()
        except ValueError:
            raise EngineRequestError(response.status_code, response.text, "server_error") from None
        _raise_if_error(result)
        return result

    async def _stream(self, handler: Callable[..., Any], request: Json) -> AsyncIterator[Json]:
        prepared = self._prepare(request, stream=True)

        def work(put: Put, stop: threading.Event) -> None:
            def on_chunk(chunk: Json) -> bool:
                put(chunk)
                return stop.is_set()  # True tells llama.cpp to cancel and free the slot

            try:
                handler(prepared, on_chunk)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None

        async with contextlib.aclosing(from_thread(work, self._pool)) as chunks:
            async for chunk in chunks:
                _raise_if_error(chunk)
                yield chunk


def _refuse_images(request: Json) -> None:
    """llama.cpp sees images only through a model's projector (mmproj) file: without one,
    say so rather than let llama.cpp fail the request."""
    for i, message in enumerate(request.get("messages") or []):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") == "image_url":
                raise UnsupportedOperation(
                    "images on llama.cpp need the model's vision projector (mmproj) file; this "
                    "model's spec lists none in multimodal_projectors",
                    param=f"messages[{i}].content[{j}]",
                )


async def _one_call(chunks: AsyncIterator[Json]) -> AsyncIterator[Json]:
    """A stream that ends once its first tool call is whole. llama.cpp leaves a template's
    tool-call format free to repeat after the first call, and `parallel_tool_calls: false` asks
    for one; ending the stream here cancels the rest of the generation."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            deltas = [c.get("delta") or {} for c in chunk.get("choices") or []]
            if any(call.get("index", 0) > 0 for d in deltas for call in d.get("tool_calls") or []):
                end = {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
                yield {**chunk, "choices": [end]}
                return
            yield chunk


class EngineRequestError(InferdError):
    """An error llama.cpp reported for one request, with the status it chose."""

    def __init__(self, status: int, message: str, error_type: str):
        super().__init__(message)
        self.status_code = status
        self.error_type = "invalid_request_error" if 400 <= status < 500 else error_type
        self.code = error_type


def _raise_if_error(result: Json) -> None:
    error = result.get("error")
    if error is None:
        return
    if not isinstance(error, dict):
        raise EngineRequestError(500, str(error), "server_error")
    status = int(error.get("code") or 500)
    message = str(error.get("message") or "llama.cpp reported an error")
    raise EngineRequestError(status, message, str(error.get("type") or "server_error"))
