"""A front tokenizes an embedding request's texts itself where the model process offers its
tokenizer (`Engine.relay_tokenizer`, a file the grant names), and sends the texts' ids.

Why: the model process has one interpreter lock for its event loop and its model thread, and
tokenizing a pass there cost the model thread ~0.9 ms of each ~2 ms pass of short texts on an
H200 host, most of it waiting to win the lock back from the loop (the tokenizer gives it up);
padding ids into a pass takes it ~25 µs. Spread over the fronts, a short text's tokenizing is
~20 µs of one front's loop. (Tokenizing on the model process's own loop as frames arrived cut
the model thread's part as much but cost that loop, MiniLM's limit: embeddings_h200.txt, run 33.)

The file holds the tokenizer as `tokenizers` writes it and probe texts with the ids the model
process's copy gave them: a front uses it only if its own `tokenizers` gives the same ids, and
loads it on a thread, sending texts meanwhile. A front without `tokenizers` sends texts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("inferd.fronts")

# Requests of more text than this are tokenized on a thread (the batch call gives the
# interpreter lock up), not on the front's loop, which other requests share: ~100 µs of
# English text encoded one call on the loop.
_INLINE_CHARACTERS = 4096


class TextIds:
    """The tokenizers the model processes offer, by the path of their file; a file written anew
    (its process restarted, which writes it at the same path) is read again."""

    def __init__(self) -> None:
        # path -> (the file's identity, its tokenizer or None: unusable, or still loading)
        self._held: dict[str, tuple[tuple[int, int, int], Any]] = {}
        self._loading: set[asyncio.Future[None]] = set()

    async def ids(self, path: str, texts: list[str]) -> list[list[int]] | None:
        """Each text's ids as the model reads them (special tokens included, truncated as the
        model truncates), or None: send the texts."""
        try:
            stat = os.stat(path)
        except OSError:  # gone with its process: the relay finds that out itself
            return None
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        held = self._held.get(path)
        if held is None or held[0] != identity:
            self._held[path] = (identity, None)
            loading = asyncio.get_running_loop().run_in_executor(None, self._load, path, identity)
            self._loading.add(loading)  # the loop holds it only weakly
            loading.add_done_callback(self._loading.discard)
            return None
        tokenizer = held[1]
        if tokenizer is None:
            return None
        try:
            if len(texts) == 1 and len(texts[0]) <= _INLINE_CHARACTERS:
                return [tokenizer.encode(texts[0]).ids]
            encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
            if sum(len(text) for text in texts) <= _INLINE_CHARACTERS:
                encodings = encode(texts)
            else:
                encodings = await asyncio.to_thread(encode, texts)
        except Exception as exc:  # the model process tokenizes what this one could not
            log.warning("%s: tokenizing failed (%r); the texts are sent", path, exc)
            return None
        return [encoding.ids for encoding in encodings]

    def _load(self, path: str, identity: tuple[int, int, int]) -> None:
        tokenizer = None
        try:
            from tokenizers import Tokenizer

            offer = orjson.loads(Path(path).read_bytes())
            tokenizer = Tokenizer.from_str(offer["tokenizer"])
            for text, ids in offer["probes"]:
                if tokenizer.encode(text).ids != ids:
                    log.warning(
                        "%s: this process's tokenizers library gives other ids than the model "
                        "process's; its embeddings are sent as texts",
                        path,
                    )
                    tokenizer = None
                    break
        except ImportError:
            log.info("no tokenizers library in the server's environment: texts are sent as is")
        except Exception as exc:  # a file cut short, a format this version cannot read
            log.warning("%s: cannot tokenize with it (%r); texts are sent as is", path, exc)
            tokenizer = None
        held = self._held.get(path)
        if held is not None and held[0] == identity:
            self._held[path] = (identity, tokenizer)
