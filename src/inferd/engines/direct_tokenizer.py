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

The same backend, without its padding, can tokenize a text anywhere: the API processes that relay
embeddings (`api/fronts`) send a text's ids instead of the text, and the model thread only pads
them into a pass (`stacked`). `for_relays` offers that only where ids so padded are the model's
own features, with probe texts and their ids, by which a relay checks that its own copy of the
`tokenizers` library reads the tokenizer the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from inferd.errors import InvalidRequest

log = logging.getLogger(__name__)

# What a Rust `Encoding` holds for each tensor key transformers' tokenizer call returns.
_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}

Text = str | tuple[str, str]


class DirectTokenizer:
    """Calls like `preprocess(batch)`: the features of a pass of texts (or query-document pairs)
    from a copy of the model's Rust tokenizer, with its truncation and padding as the model's own
    call set them."""

    def __init__(self, backend: Any, tensors: dict[str, torch.dtype], constants: dict[str, Any]):
        self._backend = backend
        # `encode_batch_fast` (tokenizers 0.21+) skips the character offsets nobody reads here.
        self._encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        self._tensors = tensors
        self._constants = constants
        self._vocabulary = backend.get_vocab_size(with_added_tokens=True)
        self._longest = (backend.truncation or {}).get("max_length")
        padding = backend.padding or {}
        self._pad_id = padding.get("pad_id", 0)
        self._pad_type_id = padding.get("pad_type_id", 0)
        self._multiple = padding.get("pad_to_multiple_of") or 1
        self._unpadded: Any = None  # the backend without padding: see `for_relays`

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
        probes = _probes(int(getattr(tokenizer, "model_max_length", 512) or 512), pairs)
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

    def stacked(self, rows: Sequence[str | Sequence[int]]) -> dict[str, Any]:
        """A pass's features from texts and texts' ids together (a relay's ids: what
        `for_relays`'s tokenizer gives, special tokens included), each row padded as the backend
        pads a batch. Ids no text gives (out of the vocabulary, longer than the model reads) are
        refused: on a GPU they would fail the device, not the request."""
        ids = list(rows)
        texts = [i for i, row in enumerate(rows) if isinstance(row, str)]
        if texts:
            unpadded = self._unpadded_backend()
            encode = getattr(unpadded, "encode_batch_fast", unpadded.encode_batch)
            encoded = encode([rows[i] for i in texts])
            for i, encoding in zip(texts, encoded, strict=True):
                ids[i] = encoding.ids
        longest = max(len(row) for row in ids)
        if self._longest is not None and longest > self._longest:
            raise InvalidRequest(
                f"input ids of {longest} tokens; the model reads at most {self._longest}",
                param="input",
            )
        width = longest + -longest % self._multiple
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= self._vocabulary):
            raise InvalidRequest(
                f"input ids must be from 0 to {self._vocabulary - 1} (the tokenizer's)",
                param="input",
            )
        columns = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._tensors:
            # One text's tokens are all of its first segment's type (`for_relays` checks).
            columns["token_type_ids"] = np.where(mask == 1, 0, self._pad_type_id)
        features: dict[str, Any] = {
            key: torch.from_numpy(columns[key]).to(dtype) for key, dtype in self._tensors.items()
        }
        features.update(self._constants)
        return features

    def for_relays(self) -> dict[str, Any] | None:
        """What a relay needs to send a text's ids instead of the text: the tokenizer without
        its padding (`tokenizers`' JSON) and probe texts with the ids it gives them; None where
        ids padded by `stacked` are not the features of the texts (a tokenizer whose single
        texts have type ids of their own, padding on the left)."""
        unpadded = self._unpadded_backend()
        probes: dict[Text, list[int]] = {}
        for batch in _probes(self._longest or 512, pairs=False):
            given = [encoding.ids for encoding in unpadded.encode_batch(batch)]
            if not _same(self.stacked(given), self(batch)):
                log.info("relays send texts: ids padded apart differ from the model's features")
                return None
            probes.update(zip(batch, given, strict=True))
        return {"tokenizer": unpadded.to_str(), "probes": list(probes.items())}

    def _unpadded_backend(self) -> Any:
        if self._unpadded is None:
            from tokenizers import Tokenizer

            unpadded = Tokenizer.from_str(self._backend.to_str())
            unpadded.no_padding()
            self._unpadded = unpadded
        return self._unpadded


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


def _probes(longest: int, pairs: bool) -> list[list[Text]]:
    """Batches that show truncation (a text past the `longest` the model reads), padding (texts
    of other lengths together, and a batch of one), case, whitespace, accents and other
    scripts."""
    limit = min(longest, 16384)
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
