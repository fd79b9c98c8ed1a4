"""What the transformers engine's decoders share: a request's sampling, and what comes back.

A decoder (static_decode on GPUs, paged_decode otherwise) takes token prompts, runs them in one
batch that requests join and leave between steps, and hands each request its tokens as they
come, on the event loop that submitted it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol


class Sampling(NamedTuple):
    """One request's sampling; top_k 1 is greedy, top_k the vocabulary's width is no limit."""

    temperature: float
    top_p: float
    top_k: int


class Output(NamedTuple):
    """A request's tokens so far (the end of sequence token included when it came), whether
    it is done, each token's log-probability, and why it failed if it did."""

    tokens: list[int]
    finished: bool
    logprobs: list[float]
    error: str | None = None


class Request(NamedTuple):
    """A sequence to generate: it ends at one of `eos` (the token is kept) or after
    `max_new_tokens`; `streaming` asks for every token as it comes, not only the last."""

    id: str
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling
    eos: list[int]
    streaming: bool


Deliver = Callable[[Output], None]


class Decoder(Protocol):
    def submit(self, request: Request, deliver: Deliver) -> None:
        """Start a request; `deliver` is called on the calling event loop with its tokens
        (every new one when it streams, else once at the end)."""

    def cancel(self, request_id: str) -> None:
        """End a request that has not finished (its reader has gone)."""

    def forget(self, request_id: str) -> None:
        """Drop what is kept for a request, finished or not."""

    def stop(self) -> None: ...
