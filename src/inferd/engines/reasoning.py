"""A reasoning model's thinking, taken out of its answer.

Reasoning models write their thinking between two tags (`<think>` ... `</think>` for most) before
the answer; many chat templates write the opening tag into the prompt themselves, so the answer
starts inside the block. Clients want the two apart: chat completions carry the thinking as
`reasoning_content` (DeepSeek's and Xinference's name) and `reasoning` (vLLM's), and the other
APIs translate from there.

Engines whose own parser already separated the thinking (llama.cpp for the templates it knows,
vLLM with its reasoning parser) are left alone: only text still holding the tags is split.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]

# The names clients read the thinking from: DeepSeek's API and Xinference say
# `reasoning_content`, vLLM and OpenRouter `reasoning`. Both are sent.
FIELDS = ("reasoning_content", "reasoning")


@dataclass(frozen=True)
class Tags:
    start: str
    end: str


def tags_of(family: Json) -> Tags | None:
    """The tags a catalogue entry's model thinks between; None for a model that does not."""
    if "reasoning" not in (family.get("model_ability") or []):
        return None
    return Tags(
        family.get("reasoning_start_tag") or "<think>",
        family.get("reasoning_end_tag") or "</think>",
    )


def thinking(request: Json, default: bool = True) -> bool:
    """Whether this request asked the model to think (`chat_template_kwargs.enable_thinking`,
    which every API's switch arrives as)."""
    value = (request.get("chat_template_kwargs") or {}).get("enable_thinking")
    return default if value is None else bool(value)


def opens(prompt_end: str, tags: Tags) -> bool:
    """Whether a prompt ending so leaves the answer inside the thinking block."""
    text = prompt_end.rstrip()
    start, end = text.rfind(tags.start), text.rfind(tags.end)
    return start != -1 and start > end and not text[start + len(tags.start) :].strip()


class Splitter:
    """One answer's text, piece by piece, as (thinking, answer) pieces. A tag cut across two
    pieces is held back until it is whole."""

    def __init__(self, tags: Tags, opened: bool):
        self._tags = tags
        self._opened = opened  # the prompt ends inside the thinking block
        # "lead": nothing but blanks yet; "thinking"; "after": blanks after the end tag; "answer"
        self._state = "lead"
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._held += text
        thought, said = "", ""
        while self._held:
            if self._state == "lead":
                head = self._held.lstrip()
                if not head or self._tags.start.startswith(head):
                    break  # the start tag may still be coming
                if head.startswith(self._tags.start):
                    self._state, self._held = "thinking", head[len(self._tags.start) :]
                else:
                    self._state = "thinking" if self._opened else "answer"
            elif self._state == "thinking":
                at = self._held.find(self._tags.end)
                if at == -1:
                    keep = _partial_suffix(self._held, self._tags.end)
                    thought += self._held[: len(self._held) - keep]
                    self._held = self._held[len(self._held) - keep :]
                    break
                thought += self._held[:at]
                self._held = self._held[at + len(self._tags.end) :]
                self._state = "after"
            elif self._state == "after":  # the blank lines templates put after the end tag
                self._held = self._held.lstrip()
                if self._held:
                    self._state = "answer"
            else:
                said += self._held
                self._held = ""
        return thought, said

    def finish(self) -> tuple[str, str]:
        """What was held back, once the answer has ended."""
        held, self._held = self._held, ""
        if self._state == "thinking" or (self._state == "lead" and self._opened):
            return held, ""
        return "", held


def _partial_suffix(text: str, tag: str) -> int:
    """How many characters at the end of `text` could begin `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def split_answer(answer: Json, tags: Tags, opened: bool) -> Json:
    """A whole chat answer with each choice's thinking moved out of its content."""
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        if _separated(message):
            name_both_ways(message)
            continue
        if not isinstance(message.get("content"), str):
            continue
        splitter = Splitter(tags, opened)
        thought, said = splitter.feed(message["content"])
        rest_thought, rest_said = splitter.finish()
        thought, said = (thought + rest_thought).strip(), said + rest_said
        message["content"] = said
        if thought:
            for field in FIELDS:
                message[field] = thought
    return answer


async def split_chunks(
    chunks: AsyncIterator[Json], tags: Tags, opened: bool
) -> AsyncIterator[Json]:
    """A chat stream with each choice's thinking moved out of its content deltas."""
    splitters: dict[int, Splitter | None] = {}  # None: the engine separates it itself
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            _split_chunk(chunk, splitters, tags, opened)
            yield chunk


def _split_chunk(
    chunk: Json, splitters: dict[int, Splitter | None], tags: Tags, opened: bool
) -> None:
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        index = choice.get("index", 0)
        if _separated(delta):
            splitters[index] = None
        splitter = splitters.setdefault(index, Splitter(tags, opened))
        if splitter is None:
            name_both_ways(delta)
            continue
        thought, said = splitter.feed(delta.get("content") or "")
        if choice.get("finish_reason") is not None:
            rest_thought, rest_said = splitter.finish()
            thought, said = thought + rest_thought, said + rest_said
        if "content" in delta or said:
            delta["content"] = said
        if thought:
            for field in FIELDS:
                delta[field] = thought


def _separated(message: Json) -> bool:
    """Whether the engine put thinking in a field of its own already (a role-only first delta
    says nothing either way, and is not counted)."""
    return any(message.get(field) for field in FIELDS)


def name_both_ways(message: Json) -> None:
    """A message or delta's thinking under both names, whichever the engine used."""
    for field in FIELDS:
        if message.get(field):
            for other in FIELDS:
                message.setdefault(other, message[field])
            return
