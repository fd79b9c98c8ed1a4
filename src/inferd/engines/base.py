"""The one interface every engine implements, and the configuration it is given."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from inferd.errors import InvalidRequest, UnsupportedOperation
from inferd.runtime.gpus import Need, estimate

Json = dict[str, Any]


class EngineConfig(BaseModel):
    """Everything a model process needs to load one model; sent to it as JSON."""

    model_config = ConfigDict(protected_namespaces=())

    model_uid: str
    engine: str
    model_name: str
    model_type: str
    model_format: str
    quantization: str
    model_path: str
    family: Json = Field(description="The catalogue entry, for templates, stops and limits")
    options: Json = Field(default_factory=dict, description="Engine options from the launch")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables")
    loras: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters to serve beside it, name -> folder"
    )
    gpus: list[int] = Field(
        default_factory=list, description="The GPUs placed for it (as CUDA numbers them)"
    )
    python: str | None = Field(
        default=None,
        description="The interpreter of the engine's own environment; None: the server's",
    )


class Engine(ABC):
    """A loaded model. Every method may be called concurrently from the model process's loop."""

    name: ClassVar[str]
    model_types: ClassVar[frozenset[str]]
    formats: ClassVar[frozenset[str]]
    requires: ClassVar[tuple[str, ...]]
    extra: ClassVar[str]
    cpu_options: ClassVar[Json] = {}  # options that keep the model off any GPU (n_gpu=0)
    uses_gpu: ClassVar[bool] = True  # whether a GPU is placed for it where there is one
    supports_lora: ClassVar[bool] = False  # serves LoRA adapters chosen per request

    @classmethod
    def installed(cls) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in cls.requires)

    @classmethod
    def unusable_here(cls) -> str | None:
        """Why this engine cannot run on this machine, or None if it can."""
        if not cls.installed():
            return f"not installed: pip install 'inferd[{cls.extra}]'"
        return None

    @classmethod
    def gpu_need(cls, options: Json, weights: int, count: int) -> Need:
        """What one process takes of each of the `count` GPUs it is placed on."""
        return estimate(weights, count)

    @classmethod
    def gpus_asked(cls, options: Json) -> tuple[int, str] | None:
        """How many GPUs the launch's engine options themselves ask for, and the option that
        asks (vLLM's `tensor_parallel_size`); None where they leave it to `n_gpu`."""
        return None

    @classmethod
    def context_window(cls, context_length: int, options: Json) -> int | None:
        """The tokens one request may hold, prompt and answer together, as launched with
        `options`; None where the engine checks a request's length itself."""
        return context_length

    def __init__(self, config: EngineConfig) -> None:
        self.config = config

    @abstractmethod
    def load(self) -> None:
        """Load the weights; runs in a thread, and its exception is the launch's failure reason."""

    async def start(self) -> None:  # noqa: B027 - most engines are ready once loaded
        """Finish loading on the model process's event loop, after `load`."""

    def close(self) -> None:  # noqa: B027 - most engines free everything on process exit
        """Release what the process exit would not."""

    def slots(self) -> int | None:
        """How many requests the loaded model works on side by side; more wait in the
        server's queue. None: it takes any number and schedules them itself."""
        return 1

    def relay_tokenizer(self) -> dict[str, Any] | None:
        """For embedding models that take their texts' ids from the relays (`input_ids`, the
        ids of each text as the model reads it): the tokenizer the relays use and probe texts
        with their ids (`DirectTokenizer.for_relays`). None: relays send texts."""
        return None

    async def metrics(self) -> bytes | None:
        """Prometheus figures the engine keeps outside this process's registry (text format)."""
        return None

    async def chat(self, request: Json) -> Json:
        raise self._unsupported("chat")

    def chat_stream(self, request: Json) -> AsyncIterator[Json | bytes]:
        raise self._unsupported("chat")

    async def complete(self, request: Json) -> Json:
        raise self._unsupported("completions")

    def complete_stream(self, request: Json) -> AsyncIterator[Json | bytes]:
        raise self._unsupported("completions")

    async def embed(self, request: Json) -> Json:
        raise self._unsupported("embeddings")

    async def rerank(self, request: Json) -> Json:
        raise self._unsupported("rerank")

    async def transcribe(self, request: Json) -> Json:
        """Speech to text; `request["audio"]` holds the file's bytes, base64-encoded."""
        raise self._unsupported("transcription")

    async def speech(self, request: Json) -> tuple[bytes, str]:
        """Text to speech: the audio file's bytes and their media type."""
        raise self._unsupported("speech")

    async def images(self, request: Json) -> Json:
        raise self._unsupported("image generation")

    def _refuse_unknown(self, options: Json) -> None:
        """Launch options left after the engine took its own are mistakes: name them."""
        if options:
            raise InvalidRequest(
                f"unknown {self.name} option(s): {', '.join(sorted(options))}",
                param=next(iter(options)),
            )

    def _unsupported(self, what: str) -> UnsupportedOperation:
        return UnsupportedOperation(
            f"model {self.config.model_uid!r} ({self.config.model_type}, engine {self.name}) "
            f"does not support {what}",
            param="model",
        )


def flag(options: Json, name: str) -> bool:
    """Take a yes/no launch option out of `options`; off unless given as true. Anything but a
    boolean (or its spelling, from the CLI) is refused, so "false" never reads as true."""
    value = options.pop(name, False)
    if isinstance(value, bool):
        return value
    spelled = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if isinstance(value, (str, int)) and str(value).lower() in spelled:
        return spelled[str(value).lower()]
    raise InvalidRequest(f"{name} must be true or false, not {value!r}", param=name)


def json_output(request: Json) -> bool:
    """Whether the request asks for JSON output (`response_format` json_object or json_schema),
    which engines constrain by a grammar."""
    return (request.get("response_format") or {}).get("type") not in (None, "text")


def with_stops(request: Json, stops: list[str]) -> Json:
    """The request's own stop strings followed by the model's (its template's end-of-turn)."""
    if not stops:
        return request
    stop = request.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    return {**request, "stop": stop + [s for s in stops if s not in stop]}


def by_prefix(table: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The value of the first entry in `table` whose prefix starts `name` (case aside)."""
    name = name.lower()
    return next((value for prefix, value in table if name.startswith(prefix)), None)
