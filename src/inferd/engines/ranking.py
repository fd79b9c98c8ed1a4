"""The answer to a rerank request, in the shape Xinference's, Jina's and Cohere's clients read,
whichever engine scored the documents."""

from __future__ import annotations

import uuid

from inferd.engines.base import Json


def rerank_response(uid: str, request: Json, scores: list[float], tokens: int) -> Json:
    """Documents by descending relevance, cut to `top_n`, with their text if asked."""
    documents: list[str] = request["documents"]
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    top_n = request.get("top_n")
    if top_n is not None:
        order = order[:top_n]
    with_text = bool(request.get("return_documents"))
    results = [
        {
            "index": i,
            "relevance_score": scores[i],
            "document": {"text": documents[i]} if with_text else None,
        }
        for i in order
    ]
    return {
        "id": str(uuid.uuid4()),
        "model": uid,
        "results": results,
        # Cohere's and Xinference's clients read `meta`, Jina's `usage`.
        "meta": {
            "api_version": None,
            "billed_units": None,
            "tokens": {"input_tokens": tokens, "output_tokens": 0},
            "warnings": None,
        },
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
