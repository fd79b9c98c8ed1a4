"""A pass's features straight from a fast tokenizer's Rust backend.

sentence-transformers' `preprocess` goes through transformers' tokenizer call, which builds
Python lists of every token id and then turns them into tensors element by element (it even
flattens the nested lists once to see whether they are empty): on a GPU host that was ~30% of the
model thread for 200-word texts and the largest part of a short text's pass beside the pass
itself. The backend gives the same ids as arrays of a batch at C speed.

It is used only where it gives exactly what the model's own `preprocess` gives: `verified` runs
both over texts that probe truncation, padding, case, whitespace and scripts, and answers None
(keep `preprocess`) on any difference, a key it cannot fill or a tokenizer without a Rust
backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

# What a Rust `Encoding` holds for each tensor key transformers' tokenizer call returns.
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}

Text = str | tuple[str, str]


class DirectTokenizer:
    """Calls like `preprocess(batch)`: the features of a pass of texts (or query-document pairs)
    from a copy of the model's Rust tokenizer, with its truncation and padding as the model's own
    call set them."""

    def __init__(self, backend: Any, tensors: dict[str, torch.dtype], constants: dict[str, Any]):
        # `encode_batch_fast` (tokenizers 0.21+) skips the character offsets nobody reads here.
        self._encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        self._tensors = tensors
        self._constants = constants

    @classmethod
    def verified(
        cls,
        prepare: Callable[[list[Any]], dict[str, Any]],
        tokenizer: Any,
        pairs: bool = False,
    ) -> DirectTokenizer | None:
        """A `DirectTokenizer` that gives what `prepare` gives for every probe, else None."""
        rust = getattr(tokenizer, "_tokenizer", None)
        if rust is None or not hasattr(rust, "encode_batch") or not hasattr(rust, "to_str"):
            return None
        probes = _probes(tokenizer, pairs)
        try:
            # The model's own call first: it leaves the backend's truncation and padding as it
            # set them, which the copy keeps (a copy: the event loop's thread may tokenize with
            # the original to count tokens while the model thread encodes).
            expected = [prepare(list(batch)) for batch in probes]
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(rust.to_str())
        except Exception as error:  # a probe the model refuses, a backend that cannot be copied
            log.info("tokenizing through the model's own call: %s", error)
            return None
        first = expected[0]
        tensors = {k: v.dtype for k, v in first.items() if isinstance(v, torch.Tensor)}
        constants = {k: v for k, v in first.items() if not isinstance(v, torch.Tensor)}
        if not tensors or not set(tensors) <= set(_FIELDS):
            log.info("tokenizing through the model's own call: it gives %s", sorted(first))
            return None
        direct = cls(backend, tensors, constants)
        for batch, want in zip(probes, expected, strict=True):
            got = direct(list(batch))
            if not _same(got, want):
                log.info("tokenizing through the model's own call: the backend's features differ")
                return None
        log.info("tokenizing with the tokenizer's Rust backend (it gives the model's own features)")
        return direct

    def __call__(self, batch: Sequence[Text]) -> dict[str, Any]:
        encodings = self._encode(batch)
        features: dict[str, Any] = {}
        for key, dtype in self._tensors.items():
            field = _FIELDS[key]
            rows = np.array([getattr(e, field) for e in encodings], dtype=np.int64)
            features[key] = torch.from_numpy(rows).to(dtype)
        features.update(self._constants)
        return features


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    if got.keys() != want.keys():
        return False
    for key, value in want.items():
        mine = got[key]
        if isinstance(value, torch.Tensor):
            if not isinstance(mine, torch.Tensor) or mine.dtype != value.dtype:
                return False
            if mine.shape != value.shape or not torch.equal(mine, value):
                return False
        elif mine != value:
            return False
    return True


def _probes(tokenizer: Any, pairs: bool) -> list[list[Text]]:
    """Batches that show truncation (a text past the longest the model reads), padding (texts of
    other lengths together, and a batch of one), case, whitespace, accents and other scripts."""
    limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 16384)
    texts = [
        "The river runs past the old mill.",
        "  Leading and trailing spaces, tabs\tand\nnew lines  ",
        "UPPER and lower CASE, Café, naïve façade",
        "数据中心的模型服务 — エンベディング, 🙂 emoji",
        "",
        "x",
    ]
    long = " ".join(["model", "server", "Memory", "ÉTÉ"] * (limit // 2 + 8))
    batches: list[list[Text]] = [list(texts), [long, *texts[:2]], [texts[2]]]
    if not pairs:
        return batches
    paired: list[list[Text]] = [[(texts[0], str(t)) for t in batch] for batch in batches]
    return [*paired, [(long, texts[1])]]
