"""Client JSON passed on to a model process: integers beyond 64 bits, which Python parses but
orjson will not write, are a 400 naming where they are rather than a 500 on the way."""

from __future__ import annotations

from typing import Any

import orjson

from inferd.errors import InvalidRequest


def dumps(value: Any, param: str) -> bytes:
    """`value` as JSON; a 400 naming the field under `param` that holds a number too large."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        where = _oversized(value, param) or param or "body"
        raise InvalidRequest(
            f"{where} holds an integer too large to pass on (integers must fit in 64 bits)",
            param=where,
        ) from None


def text(value: Any, param: str) -> str:
    """A JSON value as the text OpenAI's tool-call `arguments` carry (a string stays as is)."""
    return value if isinstance(value, str) else dumps(value, param).decode()


def _oversized(value: object, where: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return where if not -(2**63) <= value < 2**64 else None
    children: Any = ()
    if isinstance(value, dict):
        children = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    for path, child in children:
        if (found := _oversized(child, path)) is not None:
            return found
    return None
