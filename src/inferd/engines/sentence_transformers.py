"""Embedding models on sentence-transformers (PyTorch, CPU or CUDA)."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferd.engines.base import Engine, Json
from inferd.engines.batching import DynamicBatcher
from inferd.errors import InvalidRequest


class SentenceTransformersEngine(Engine):
    name = "sentence_transformers"
    model_types = frozenset({"embedding"})
    formats = frozenset({"pytorch"})
    requires = ("sentence_transformers", "torch")
    extra = "sentence-transformers"
    cpu_options = {"device": "cpu"}

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        options = dict(self.config.options)
        device = options.pop("device", None)
        trust_remote_code = bool(options.pop("trust_remote_code", False))
        if options:
            raise InvalidRequest(
                f"unknown sentence_transformers option(s): {', '.join(sorted(options))}",
                param=next(iter(options)),
            )
        self._model = SentenceTransformer(
            self.config.model_path,
            device=device,
            trust_remote_code=trust_remote_code,
            local_files_only=True,
        )
        # One thread runs the model: torch already spreads one forward pass over every core,
        # and concurrent requests are batched into that pass rather than run side by side.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._batcher: DynamicBatcher[str] = DynamicBatcher(self._encode, self._pool, max_items=64)

    def close(self) -> None:
        self._batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def embed(self, request: Json) -> Json:
        texts: list[str] = request["input"]
        rows = await self._batcher.submit(texts)
        vectors = [vector for vector, _ in rows]
        tokens = sum(count for _, count in rows)
        as_base64 = request.get("encoding_format") == "base64"
        dimensions = request.get("dimensions")
        data = []
        for index, vector in enumerate(vectors):
            if dimensions is not None:
                vector = _truncate(vector, dimensions)
            embedding: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "model": self.config.model_uid,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _encode(self, texts: list[str]) -> list[tuple[Any, int]]:
        """(vector, token count) per text, in one pass over all of them."""
        # tokenize() truncates as encode() does, so this counts the tokens the model saw.
        counts = self._model.tokenize(texts)["attention_mask"].sum(dim=1).tolist()
        vectors = self._model.encode(texts, convert_to_numpy=True, batch_size=64)
        return list(zip(vectors, (int(c) for c in counts), strict=True))


def _truncate(vector: Any, dimensions: int) -> Any:
    """Matryoshka-style truncation, re-normalised, as OpenAI's `dimensions` does."""
    import numpy as np

    cut = vector[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut
