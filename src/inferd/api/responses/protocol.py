"""Wire models of OpenAI's Responses API: what a valid request looks like.

Input items are checked item by item in convert.py (their kinds are many and grow); the request's
own fields are checked here, so a bad value is a 400 naming it. What the API offers and inferd
does not (background runs, conversations, a hosted tool required) is refused by name.
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


# Tools OpenAI runs on its side; inferd has nothing to run them with. Offered to the model
# for it to choose (Codex offers web search on every turn) they are left out, which the model
# cannot tell from not having them; asked for by tool_choice they are refused.
HOSTED = {
    "web_search",
    "web_search_preview",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "image_generation",
    "mcp",
}


class FunctionTool(_Open):
    type: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[FunctionTool] | None = None  # a namespace's functions

    @field_validator("type")
    @classmethod
    def _known(cls, kind: str) -> str:
        if kind not in ("function", "namespace", *HOSTED):
            raise ValueError(
                f"{kind!r} tools are not available here; function tools (and namespaces of "
                "them) are: the model calls, the client runs"
            )
        return kind

    def functions(self) -> list[tuple[FunctionTool, str | None]]:
        """The function tools this tool offers the model, each with its namespace."""
        if self.type == "function":
            return [(self, None)]
        if self.type == "namespace":
            return [(t, self.name) for t in self.tools or [] if t.type == "function"]
        return []


class NamedFunction(_Open):
    type: str
    name: str | None = None

    @field_validator("type")
    @classmethod
    def _a_function(cls, kind: str) -> str:
        if kind != "function":
            raise ValueError(f"{kind!r} tools are not available here to be required")
        return kind


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
            if tool.type in ("function", "namespace") and not tool.name:
                raise ValueError(f"tools[{i}] needs a name")
        return tools

    def functions(self) -> list[tuple[FunctionTool, str | None]]:
        return [pair for tool in self.tools or [] for pair in tool.functions()]

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
