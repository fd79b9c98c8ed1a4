"""Image-text-to-text models on transformers: their images read, their prompts built by the
model's processor, and `generate` run in a thread whose tokens arrive on the event loop.

transformers' continuous batching takes token ids only (no pixels), so a vision model answers
one request at a time through `model.generate`; vLLM is the engine that batches them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import threading
from collections.abc import AsyncIterator
from typing import Any

from inferd.engines.thread_stream import Put, from_thread
from inferd.errors import InvalidRequest

Json = dict[str, Any]


def processor_messages(messages: list[Json]) -> list[Json]:
    """OpenAI messages as processors' chat templates read them: content as a list of parts,
    each image (already a data URL: the server fetched any other) decoded in its place."""
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if content is None or isinstance(content, str):
            parts = [{"type": "text", "text": content or ""}]
        else:
            parts = []
            for j, part in enumerate(content):
                if part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    parts.append({"type": "image", "image": _image(url, i, j)})
                else:
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
        out.append({**message, "content": parts})
    return out


def _image(url: str, i: int, j: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    param = f"messages[{i}].content[{j}].image_url"
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (IndexError, binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"the image could not be read: {exc}", param=param) from None
    return image.convert("RGB")


class _Streamer:
    """transformers' streamer protocol: `put` gets the prompt once, then each new token."""

    def __init__(self, deliver: Any):
        self._deliver = deliver
        self._prompt_seen = False
        self.tokens: list[int] = []

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
        self._deliver(list(self.tokens))

    def end(self) -> None:
        pass


async def generated(
    model: Any, inputs: Any, settings: Json, lock: threading.Lock
) -> AsyncIterator[tuple[list[int], bool]]:
    """The tokens `model.generate(**inputs, **settings)` has written so far, after each new
    one, and whether it has finished. Closing the iterator early stops the generation at its
    next step."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    def work(put: Put, stop: threading.Event) -> None:
        class Stopped(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        with lock:  # one generation at a time on the one model
            if not stop.is_set():
                model.generate(
                    **inputs,
                    **settings,
                    streamer=_Streamer(put),
                    stopping_criteria=StoppingCriteriaList([Stopped()]),
                )

    latest: list[int] = []
    try:
        async with contextlib.aclosing(from_thread(work)) as tokens:
            async for latest in tokens:
                yield latest, False
    except Exception as exc:
        raise RuntimeError(f"generation failed: {exc}") from exc
    yield latest, True
