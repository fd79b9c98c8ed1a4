"""An OpenAI chat stream read as the pieces other APIs rebuild their own streams from
(Anthropic's content blocks, the Responses API's output items)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

Json = dict[str, Any]


class ChatStream:
    """What a stream said, piece by piece; how it finished (`finish`, `usage`, `called`), or
    the error that ended it (`error`), once its pieces are read."""

    def __init__(self, events: AsyncIterator[Json]) -> None:
        self._events = events
        self.finish: str | None = None
        self.usage: Json = {}
        self.called = False
        self.error: Json | None = None

    async def pieces(self) -> AsyncIterator[tuple[str, Any]]:
        """("reasoning", text), ("text", text) and ("call", a tool call's delta), in order."""
        async for event in self._events:
            if "error" in event:
                self.error = event["error"]
                async for _ in self._events:  # read to its end: the relay counts it answered
                    pass
                return
            self.usage = event.get("usage") or self.usage
            for choice in event.get("choices") or []:
                self.finish = choice.get("finish_reason") or self.finish
                delta = choice.get("delta") or {}
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought:
                    yield "reasoning", thought
                if delta.get("content"):
                    yield "text", delta["content"]
                for call in delta.get("tool_calls") or []:
                    self.called = True
                    yield "call", call
