"""Encoder passes replayed as CUDA graphs (`engines/graphed_passes.py`), on sentence-transformers
models of the real BERT architecture with random weights, built here: padding a pass up to its
graph's shape leaves every real row's answer as it was (checked on the CPU, where CI runs), and
on a GPU the graphs answer as the eager passes do (`pytest -m gpu`)."""

from __future__ import annotations

import asyncio
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inferd.engines.batching import IN_FLIGHT, DynamicBatcher, ModelThread, Running
from inferd.engines.graphed_passes import (
    MAX_TOKENS,
    ROWS,
    GraphedPasses,
    bucket,
    fill_padded,
    padded,
)
from tests.tiny_bert import tiny_bert_config, tokenizer_folder

WORDS = ("the", "river", "runs", "past", "the", "old", "mill", "where", "its", "grain")
# One to 150 words: shapes below and above 128 tokens (where the token step changes).
TEXTS = [" ".join(islice(cycle(WORDS), n)) for n in (1, 4, 10, 18, 60, 150)]
OUTPUT = {"embedding": "sentence_embedding", "rerank": "scores"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT as an embedding model (mean pooling, normalised) and as a cross-encoder."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
    config = tiny_bert_config(tokenizer.vocab_size)
    root = tmp_path_factory.mktemp("graphed")
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    encoder = models.Transformer(str(root / "bert"), max_seq_length=MAX_TOKENS)
    pooling = models.Pooling(config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling, models.Normalize()]).save(str(root / "st"))
    BertForSequenceClassification(config).eval().save_pretrained(root / "cross")
    tokenizer.save_pretrained(root / "cross")
    return {"embedding": root / "st", "rerank": root / "cross"}


def load(kind: str, folder: Path, device: str) -> Any:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    if kind == "embedding":
        return SentenceTransformer(str(folder), device=device)
    return CrossEncoder(str(folder), device=device, max_length=MAX_TOKENS)


def features(kind: str, model: Any, texts: list[str]) -> dict[str, Any]:
    if kind == "embedding":
        return model.preprocess(texts)
    return model.preprocess([(texts[0], text) for text in texts])


def eager(model: Any, kind: str, given: dict[str, Any]) -> torch.Tensor:
    on_device = {
        k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in given.items()
    }
    with torch.inference_mode():
        return model(on_device)[OUTPUT[kind]]


def test_buckets_pad_little() -> None:
    for tokens in range(1, MAX_TOKENS + 1):
        _, padded_tokens = bucket(1, tokens) or (0, 0)
        assert 0 <= padded_tokens - tokens < (16 if tokens <= 128 else 64)
    assert [bucket(rows, 8)[0] for rows in ROWS] == list(ROWS)  # type: ignore[index]
    assert bucket(17, 20) == (24, 32)
    assert bucket(ROWS[-1] + 1, 8) is None
    assert bucket(1, MAX_TOKENS + 1) is None


@pytest.mark.parametrize("kind", ["embedding", "rerank"])
def test_padding_leaves_each_rows_answer(folders: dict[str, Path], kind: str) -> None:
    model = load(kind, folders[kind], "cpu")
    given = features(kind, model, TEXTS)
    rows, tokens = given["attention_mask"].shape
    shape = bucket(rows, tokens)
    assert shape is not None and shape[0] > rows and shape[1] > tokens, shape
    grown = padded(given, shape, model.tokenizer.pad_token_id)
    assert grown is not None
    assert grown["attention_mask"][:rows, tokens:].sum() == 0  # the new columns are hidden
    plain, wide = eager(model, kind, given), eager(model, kind, grown)
    assert wide.shape[0] == shape[0]
    torch.testing.assert_close(wide[:rows], plain, atol=1e-5, rtol=1e-4)
    # A tensor not of rows x tokens has padding this cannot know: no graph for it.
    assert padded({**given, "extra": torch.zeros(rows)}, shape, 0) is None
    # What a graph's pinned buffers are given for a pass, over what a wider pass left there.
    hosts = {
        k: np.full(shape, 7, np.int64) for k, v in grown.items() if isinstance(v, torch.Tensor)
    }
    fill_padded(hosts, given, model.tokenizer.pad_token_id)
    for name, host in hosts.items():
        assert np.array_equal(host, grown[name].numpy()), name


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["embedding", "rerank"])
def test_graphs_answer_as_eager_passes(folders: dict[str, Path], kind: str) -> None:
    model = load(kind, folders[kind], "cuda")
    passes = GraphedPasses(model, OUTPUT[kind], model.tokenizer.pad_token_id, model.device)
    for texts in (TEXTS[:1], TEXTS[:3], TEXTS, TEXTS * 5, TEXTS[:3]):
        given = features(kind, model, texts)
        with torch.inference_mode():
            got = passes(given)
        expected = eager(model, kind, given).float().cpu()  # on the host, as float32
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)
    # A 2-layer model's passes are all launches: each shape's graph beat its eager pass.
    assert passes.graphs == 4, passes.graphs


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["embedding", "rerank"])
def test_a_compiled_models_graphs_answer_as_eager_passes(
    folders: dict[str, Path], kind: str
) -> None:
    """The model compiled (`compiled_encoder`) once, at its two warm-up passes: passes of other
    rows and tokens need no compile more (one would raise here), and its graphs answer as the
    eager model does."""
    from inferd.engines.compiled_encoder import compiled

    model = load(kind, folders[kind], "cuda")
    fast = compiled(model, [features(kind, model, TEXTS[:1]), features(kind, model, TEXTS[:2])])
    passes = GraphedPasses(fast, OUTPUT[kind], model.tokenizer.pad_token_id, model.device)
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            for texts in (TEXTS[:3], TEXTS, TEXTS * 5, TEXTS[2:5]):
                given = features(kind, model, texts)
                with torch.inference_mode():
                    got = passes(given)
                expected = eager(model, kind, given).float().cpu()
                torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)
    finally:
        torch.compiler.set_stance("default")  # `compiled` set it for the whole process
    assert passes.graphs > 0


def test_a_compiled_model_takes_the_plain_dicts_every_pass_gives(
    folders: dict[str, Path],
) -> None:
    """Warmed up with the tokenizer's own features (a `BatchEncoding`, as a model without a
    direct tokenizer makes them), the compiled model still needs no compile for the plain dicts
    `GraphedPasses` calls it with: Dynamo guards on the input's type, and such warm-ups left
    every pass of a compiled model to run eagerly. On the CPU, where CI runs: compiling is the
    same there, only slower."""
    from inferd.engines.compiled_encoder import compiled

    model = load("embedding", folders["embedding"], "cpu")
    warm_ups = [features("embedding", model, TEXTS[:1]), features("embedding", model, TEXTS[:2])]
    assert not all(type(sample) is dict for sample in warm_ups)  # what this test is about
    fast = compiled(model, warm_ups)
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            for texts in (TEXTS[:3], TEXTS):
                given = features("embedding", model, texts)  # made as the warm-ups' were
                with torch.inference_mode():
                    got = fast(dict(given))[OUTPUT["embedding"]]
                torch.testing.assert_close(got, eager(model, "embedding", given))
    finally:
        torch.compiler.set_stance("default")  # `compiled` set it for the whole process


@pytest.mark.gpu
def test_a_graph_is_weighed_against_an_eager_pass_of_as_many_rows(
    folders: dict[str, Path],
) -> None:
    """The first pass of a shape holds fewer rows than the graph's: the eager pass the graph is
    timed against has as many rows as the graph (the first pass's rows are however many
    happened to wait, which made keeping a graph a toss-up) and the texts' own tokens (padding
    those is what a graph of long texts costs)."""
    model = load("embedding", folders["embedding"], "cuda")
    passes = GraphedPasses(model, OUTPUT["embedding"], model.tokenizer.pad_token_id, model.device)
    timed: list[tuple[int, int]] = []
    eager_pass = passes._eager

    def recorded(given: dict[str, Any]) -> np.ndarray:
        timed.append(tuple(given["attention_mask"].shape))
        return eager_pass(given)

    passes._eager = recorded  # type: ignore[method-assign]
    given = features("embedding", model, TEXTS[:3])
    shape = bucket(*given["attention_mask"].shape)
    rows, tokens = given["attention_mask"].shape
    assert shape is not None and shape[0] > rows and shape[1] > tokens
    with torch.inference_mode():
        passes(given)
    assert timed and set(timed) == {(shape[0], tokens)}, (timed, shape)


@pytest.mark.gpu
def test_passes_in_flight_at_once_answer_as_eager_ones(folders: dict[str, Path]) -> None:
    """Passes of one shape launched while the others still run, each on its own set of graphs
    (its stream, buffers and memory), answer as eager passes; one more than there are sets is
    refused rather than overwriting a running pass's buffers."""
    model = load("embedding", folders["embedding"], "cuda")
    passes = GraphedPasses(model, OUTPUT["embedding"], model.tokenizer.pad_token_id, model.device)
    # One shape (the same texts in turn), so one graph in each set.
    given = [features("embedding", model, TEXTS[i:] + TEXTS[:i]) for i in range(IN_FLIGHT)]
    passes(given[0])  # the shape's graph decided, in the first set
    running = [passes.launch(g) for g in given]
    assert all(isinstance(r, Running) for r in running)
    with pytest.raises(RuntimeError, match="in flight"):
        passes.launch(given[0])
    for g, pending in reversed(list(zip(given, running, strict=True))):  # collected in any order
        expected = eager(model, "embedding", g).float().cpu()
        torch.testing.assert_close(torch.from_numpy(pending()), expected, atol=1e-4, rtol=1e-4)
    assert passes.graphs == 1
    torch.testing.assert_close(  # a set is free again once its pass was collected
        torch.from_numpy(passes(given[1])),
        eager(model, "embedding", given[1]).float().cpu(),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.gpu
def test_requests_at_once_through_the_model_thread_get_their_own_answers(
    folders: dict[str, Path],
) -> None:
    """Many requests at once through the model thread, passes launched beside others on the
    sets of graphs: each request gets its own text's embedding, as an eager pass gives it."""
    from prometheus_client import REGISTRY

    model = load("embedding", folders["embedding"], "cuda")
    passes = GraphedPasses(model, OUTPUT["embedding"], model.tokenizer.pad_token_id, model.device)

    def prepare(texts: list[str]) -> Any:
        given = features("embedding", model, texts)
        return lambda: passes.launch(given)

    texts = [" ".join(islice(cycle(WORDS), 1 + i % 7)) + f" {i}" for i in range(96)]
    beside = "inferd_engine_passes_beside_total"
    before = REGISTRY.get_sample_value(beside) or 0.0

    async def main() -> list[list[Any]]:
        batcher: DynamicBatcher[str] = DynamicBatcher(ModelThread("t"), prepare, len, max_items=8)
        return list(await asyncio.gather(*(batcher.submit([text]) for text in texts)))

    got = asyncio.run(main())
    assert (REGISTRY.get_sample_value(beside) or 0.0) > before  # passes did overlap
    for text, (vector,) in zip(texts, got, strict=True):
        expected = eager(model, "embedding", features("embedding", model, [text]))[0]
        torch.testing.assert_close(
            torch.from_numpy(vector), expected.float().cpu(), atol=1e-4, rtol=1e-4
        )


class _ReadsOnTheHost(torch.nn.Module):
    """A model whose pass reads a number back on the host (a synchronisation capture refuses)."""

    def __init__(self, inner: torch.nn.Module, output: str) -> None:
        super().__init__()
        self.inner, self.output = inner, output

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        out = self.inner(features)
        if float(out[self.output].abs().sum()) < 0:  # never: the read is what matters
            raise AssertionError
        return out


@pytest.mark.gpu
def test_a_pass_capture_refuses_stays_eager(folders: dict[str, Path]) -> None:
    model = load("embedding", folders["embedding"], "cuda")
    reading = _ReadsOnTheHost(model, OUTPUT["embedding"])
    passes = GraphedPasses(reading, OUTPUT["embedding"], model.tokenizer.pad_token_id, model.device)
    for _ in range(2):
        given = features("embedding", model, TEXTS[:3])
        with torch.inference_mode():
            got = passes(given)
        expected = eager(model, "embedding", given).float().cpu()
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-5, rtol=1e-5)
    assert passes.graphs == 0
