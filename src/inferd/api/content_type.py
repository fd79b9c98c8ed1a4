"""Request bodies are read as JSON whatever Content-Type they arrive with.

Ollama's own documentation posts with `curl -d`, which labels the body a form, and clients built
on it (litellm's `ollama_chat`) do the same; OpenAI's and Anthropic's servers read such bodies
as the JSON they are. Only uploads (multipart, as OpenAI's audio endpoints take them) keep
their type.
"""

from __future__ import annotations

from typing import Any

_JSON = b"application/json"
_METHODS = ("POST", "PUT", "PATCH")


class JsonBodies:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in _METHODS:
            headers = scope["headers"]
            given = next((v for k, v in headers if k == b"content-type"), b"")
            kind = given.split(b";")[0].strip().lower()
            if not kind.endswith(b"json") and not kind.startswith(b"multipart/"):
                others = [(k, v) for k, v in headers if k != b"content-type"]
                scope = {**scope, "headers": [*others, (b"content-type", _JSON)]}
        await self.app(scope, receive, send)
