"""Wire models of OpenAI's Responses API: what a valid request looks like.

Input items are checked item by item in convert.py (their kinds are many and grow); the request's
own fields are checked here, so a bad value is a 400 naming it. What the API offers and inferd
does not (background runs, conversations, hosted tools) is refused by name, not ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(_Open):
    format: TextFormat | None = None


class Reasoning(_Open):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: str | None = None


class FunctionTool(_Open):
    type: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("type")
    @classmethod
    def _function_only(cls, kind: str) -> str:
        if kind != "function":
            raise ValueError(
                f"{kind!r} tools are hosted by OpenAI and not available here; "
                "function tools are (the model calls, the client runs)"
            )
        return kind


class NamedFunction(_Open):
    type: Literal["function"]
    name: str


class ResponsesRequest(_Open):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[FunctionTool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    store: bool = True
    previous_response_id: str | None = None
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool | None = None
    conversation: Any = None

    @field_validator("tools")
    @classmethod
    def _named(cls, tools: list[FunctionTool] | None) -> list[FunctionTool] | None:
        for i, tool in enumerate(tools or []):
            if not tool.name:
                raise ValueError(f"tools[{i}] needs a name")
        return tools

    @field_validator("background")
    @classmethod
    def _in_the_foreground(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("background responses are not available here; leave it out")
        return value

    @field_validator("conversation")
    @classmethod
    def _no_conversations(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "the Conversations API is not available here; continue a conversation with "
                "previous_response_id"
            )
        return value
