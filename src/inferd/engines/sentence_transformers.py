"""Embedding and rerank models on sentence-transformers (PyTorch, CPU or CUDA).

A rerank model is a cross-encoder (each query-document pair read together) or, for any embedding
model launched as rerank, a bi-encoder (query and documents embedded, compared by cosine).
"""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferd.engines.base import Engine, Json, flag
from inferd.engines.batching import DynamicBatcher
from inferd.engines.ranking import rerank_response

_BATCH = 64


class SentenceTransformersEngine(Engine):
    name = "sentence_transformers"
    model_types = frozenset({"embedding", "rerank"})
    formats = frozenset({"pytorch"})
    requires = ("sentence_transformers", "torch")
    extra = "sentence-transformers"
    cpu_options = {"device": "cpu"}

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        options = dict(self.config.options)
        device = options.pop("device", None)
        trust_remote_code = flag(options, "trust_remote_code")
        self._refuse_unknown(options)
        family = self.config.family
        self._cross = self.config.model_type == "rerank" and family["method"] == "cross-encoder"
        if self._cross:
            from sentence_transformers import CrossEncoder

            self._model = CrossEncoder(
                self.config.model_path,
                device=device,
                max_length=family["max_tokens"],
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
        else:
            self._model = SentenceTransformer(
                self.config.model_path,
                device=device,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
        # One thread runs the model: torch already spreads one forward pass over every core,
        # and concurrent requests are batched into that pass rather than run side by side.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._batcher: DynamicBatcher[str] = DynamicBatcher(
            self._encode, self._pool, max_items=_BATCH
        )

    def slots(self) -> int:
        # Embedding requests share forward passes of up to _BATCH texts; ranking runs one
        # request's pairs at a time.
        return 1 if self._cross else _BATCH

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
            # A float32 array as is: the model process writes it with orjson's numpy support,
            # each number in the shortest form that reads back as the same float32 (40% less
            # JSON than Python's floats, and quicker for both sides).
            embedding: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return {
            "object": "list",
            "model": self.config.model_uid,
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def rerank(self, request: Json) -> Json:
        query: str = request["query"]
        documents: list[str] = request["documents"]
        scores, tokens = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._score, query, documents
        )
        return rerank_response(self.config.model_uid, request, scores, tokens)

    def _score(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Each document's relevance to the query, and the tokens the model read."""
        if self._cross:
            pairs = [(query, document) for document in documents]
            scores = self._model.predict(pairs, batch_size=32, convert_to_numpy=True)
            encoded = self._model.tokenizer(
                [query] * len(documents),
                documents,
                truncation=True,
                max_length=self._model.max_length,
            )
            tokens = sum(len(ids) for ids in encoded["input_ids"])
            return [float(s) for s in scores], tokens
        texts = [query, *documents]
        tokens = int(self._model.tokenize(texts)["attention_mask"].sum())
        vectors = self._model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        return [float(v) for v in vectors[1:] @ vectors[0]], tokens

    def _encode(self, texts: list[str]) -> list[tuple[Any, int]]:
        """(vector, token count) per text, _BATCH texts to a forward pass.

        The model's own modules are called directly rather than through `encode`, which would
        tokenize a second time and walk the model's modules on every call: a millisecond of
        a single sentence's ten."""
        import torch
        from sentence_transformers.util import batch_to_device

        model = self._model
        # `preprocess` replaced `tokenize` in sentence-transformers 6; both truncate as the
        # model does, so the mask counts the tokens it saw.
        prepare = getattr(model, "preprocess", None) or model.tokenize
        rows: list[tuple[Any, int]] = []
        for start in range(0, len(texts), _BATCH):
            features = prepare(texts[start : start + _BATCH])
            counts = features["attention_mask"].sum(dim=1).tolist()
            with torch.inference_mode():
                output = model(batch_to_device(features, model.device))
            vectors = output["sentence_embedding"].float().cpu().numpy()
            rows.extend(zip(vectors, (int(c) for c in counts), strict=True))
        return rows


def _truncate(vector: Any, dimensions: int) -> Any:
    """Matryoshka-style truncation, re-normalised, as OpenAI's `dimensions` does."""
    import numpy as np

    cut = vector[:dimensions]
    norm = float(np.linalg.norm(cut))
    return cut / norm if norm > 0 else cut
