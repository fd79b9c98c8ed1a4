"""Wire models of Anthropic's Messages API: what a valid request looks like.

Fields Anthropic adds over time (`metadata`, `service_tier`, `cache_control` on blocks, ...) are
let through and ignored, so a newer SDK or Claude Code keeps working; the fields below are
checked, so a bad value is a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageSource(_Open):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Open):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Open):
    # Claude Code sends "system" turns among the messages (its environment, its reminders).
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class ToolDefinition(_Open):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Open):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=0)


class Conversation(_Open):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None

    @field_validator("tool_choice")
    @classmethod
    def _names_a_tool(cls, choice: ToolChoice | None, info: Any) -> ToolChoice | None:
        if choice is None or choice.type in ("auto", "none"):
            return choice
        tools = info.data.get("tools") or []
        if not tools:
            raise ValueError(f"tool_choice {choice.type!r} needs tools")
        if choice.type == "tool" and choice.name not in {t.name for t in tools}:
            raise ValueError(f"it names {choice.name!r}, which is not among the tools")
        return choice


class MessagesRequest(Conversation):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=16)
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)


class CountTokensRequest(Conversation):
    pass
