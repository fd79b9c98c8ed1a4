"""Wire models of the OpenAI endpoints: what a valid request looks like.

Fields the engine may know beyond OpenAI's (top_k, min_p, repeat_penalty, grammar, ...) pass
through untouched; the fields below are checked here so a bad value is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from inferd.api import openai_tokens
from inferd.api.errors import param_name
from inferd.errors import InvalidRequest

Stop = str | list[str] | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)

    def engine_body(self, uid: str) -> dict[str, Any]:
        body = self.model_dump(exclude_none=True)
        body["model"] = uid
        return body


class _Sampling(_Request):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: Stop) -> Stop:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value


class StreamOptions(BaseModel):
    include_usage: bool = False


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = ""


class ToolCall(BaseModel):
    """A call an assistant message made earlier in the conversation; engines refuse (some with
    a 500) a call without its type or function, so it is checked here."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    type: Literal["function"]
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: ToolFunction


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    # A reasoning model's switch, as OpenAI's clients send it and as vLLM's and Xinference's do.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("tool_choice")
    @classmethod
    def _choice_names_a_tool(cls, choice: Any, info: ValidationInfo) -> Any:
        tools: list[Tool] = info.data.get("tools") or []
        if choice not in (None, "none") and not tools:
            raise ValueError("tool_choice is only allowed when tools are given")
        if isinstance(choice, NamedToolChoice):
            name = choice.function.name
            if name not in {tool.function.name for tool in tools}:
                raise ValueError(f"it names {name!r}, which is not among the tools")
        return choice

    def engine_body(self, uid: str) -> dict[str, Any]:
        body = super().engine_body(uid)
        if "max_completion_tokens" in body:
            body.setdefault("max_tokens", body.pop("max_completion_tokens"))
        if isinstance(self.tool_choice, NamedToolChoice):
            # "Call this function" is "a call is required" over a list of just that function,
            # which every engine's constrained decoding can express.
            name = self.tool_choice.function.name
            body["tools"] = [t for t in body["tools"] if t["function"]["name"] == name]
            body["tool_choice"] = "required"
        if self.reasoning_effort is not None:
            kwargs = body.setdefault("chat_template_kwargs", {})
            kwargs.setdefault("enable_thinking", self.reasoning_effort not in _NO_THINKING)
        return body


_NO_THINKING = ("none", "minimal")


def one_system_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every system message's text in one leading system message: chat templates (Llama's,
    Qwen's, Gemma's) take a system turn only first, and other APIs' clients send several
    (Claude Code among its messages, Codex as two developer messages)."""
    texts = [str(m["content"]) for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest] if texts else rest


def chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    """A chat request another API was translated into, checked as a client's would be: a 400
    naming the field where it does not hold."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = param_name(tuple(first["loc"]))
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"invalid '{where}': {message}", param=where) from None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    # OpenAI's default for completions; without it llama.cpp generates to the end of the context.
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, le=1)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("the prompt list is empty")
        return value


class EmbeddingRequest(_Request):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    # sentence-transformers' text put before each input, by the model's name for it (TEI's and
    # Xinference's `prompt_name`, e.g. "query") or as is (Xinference's `prompt`).
    prompt_name: str | None = Field(default=None, min_length=1)
    prompt: str | None = None

    @field_validator("input")
    @classmethod
    def _texts(cls, value: Any) -> list[str]:
        texts: list[Any] = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must hold at least one text")
        if len(texts) > 2048:
            raise ValueError(f"at most 2048 inputs per request, got {len(texts)}")
        if isinstance(texts[0], int):  # one array of token ids
            texts = [texts]
        if not isinstance(texts[0], str):  # arrays of OpenAI's token ids: their texts
            texts = openai_tokens.decoded(texts)
        for i, text in enumerate(texts):
            if not text:
                raise ValueError(f"input[{i}] is an empty string")
        return list(texts)


class RerankRequest(_Request):
    """Xinference's, Jina's and Cohere's rerank body; documents as strings or {"text": ...}."""

    query: str = Field(min_length=1)
    documents: list[str | dict[str, Any]] = Field(min_length=1, max_length=4096)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool | None = None
    return_len: bool | None = None
    max_chunks_per_doc: int | None = None

    @field_validator("documents")
    @classmethod
    def _texts(cls, value: list[str | dict[str, Any]]) -> list[str]:
        texts = []
        for i, document in enumerate(value):
            text = document.get("text") if isinstance(document, dict) else document
            if not isinstance(text, str) or not text:
                raise ValueError(f"documents[{i}] must be a non-empty string or {{'text': ...}}")
            texts.append(text)
        return texts

    @field_validator("max_chunks_per_doc")
    @classmethod
    def _no_chunking(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError(
                "splitting documents into chunks is not supported; a document longer than the "
                "model's max_tokens is truncated"
            )
        return value


_Sampling.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()
