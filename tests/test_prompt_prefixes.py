"""Prompts tokenized from where they part from an earlier one (`engines/prompt_prefixes.py`)
get the ids a whole tokenization gives: real tokenizers of the three kinds chat models ship
(GPT-2's byte-level BPE with ChatML's tokens, BERT's WordPiece, a SentencePiece-style BPE that
marks a text's start), added tokens that strip the spaces beside them or want a word's edge,
over random conversations that grow turn by turn, share a system prompt, or differ right after
a cut."""

from __future__ import annotations

import functools
import random
import threading
from typing import Any

import pytest
from prometheus_client import REGISTRY
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from inferd.engines.prompt_prefixes import PromptPrefixes, reuse_in
from tests.conftest import _bpe_tokenizer
from tests.tiny_bert import tokenizer_folder

# Words of several scripts, cases and punctuation.
TEXT = (
    "the river runs past old mill where its grain was ground Model SERVER memory Café naïve "
    "数据 中心 エンベディング 🙂 don't e-mail 3.14 #tag word7 of"
)
WORDS = TEXT.split(" ")
GAPS = (" ", " ", " ", "  ", "\n", "\n\n", "\t", "")


def _chatml() -> Any:
    tokenizer = _bpe_tokenizer("<|im_start|>", "<|im_end|>")
    # A token inside another (never a cut), and ones that take the spaces beside them or match
    # only as a whole word.
    tokenizer.add_tokens(
        [
            AddedToken("<|im", special=False, normalized=False),
            AddedToken("<sep>", lstrip=True, rstrip=True, normalized=False),
            AddedToken("<w>", single_word=True, normalized=False),
        ]
    )
    return tokenizer


def _wordpiece() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_folder())


def _metaspace() -> Any:
    """A Llama-2-like BPE whose pre-tokenizer puts a word-start marker before a text's first
    word only."""
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    raw.decoder = decoders.Metaspace(prepend_scheme="first")
    corpus = [" ".join(random.Random(i).choices(WORDS, k=30)) for i in range(200)]
    raw.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "[INST]"]),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TOKENIZERS = {"chatml": _chatml, "wordpiece": _wordpiece, "metaspace": _metaspace}
# How each tokenizer's template opens and closes a message.
TURNS = {
    "chatml": ("<|im_start|>{role}\n", "<|im_end|>\n"),
    "wordpiece": ("[CLS] {role}: ", " [SEP]"),
    "metaspace": ("<s>[INST] {role} ", "</s>"),
}
# Texts that follow a cut and try to join what precedes it.
AWKWARD = ("", " ", "\n", "  lead", "<w>x", "<sep>  y", "_start|>", "|>", "▁", "<|im_end|>")


def _words(rng: random.Random, count: int) -> str:
    out = []
    for _ in range(count):
        out.append(rng.choice(WORDS))
        out.append(rng.choice(GAPS))
        if rng.random() < 0.02:
            out.append(rng.choice(("<w>", " <w> ", "<sep>", " <sep>  ", "<|im", "<|im_end|>")))
    return "".join(out)


def _render(kind: str, messages: list[tuple[str, str]], prompt: bool = True) -> str:
    opening, closing = TURNS[kind]
    text = "".join(opening.format(role=r) + c + closing for r, c in messages)
    return text + (opening.format(role="assistant") if prompt else "")


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, TOKENIZERS[request.param]()


def _reused() -> float:
    return REGISTRY.get_sample_value("inferd_engine_prompt_tokens_reused_total") or 0.0


@functools.cache
def _reference(tokenizer: Any) -> Tokenizer:
    """A copy of `tokenizer`'s Rust side that tokenizes whole texts however long (MiniLM's
    tokenizer file truncates and pads to 128); made once a tokenizer (a tenth of a second)."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _whole(tokenizer: Any, text: str) -> list[int]:
    return _reference(tokenizer).encode(text, add_special_tokens=False).ids


def test_growing_conversations_reuse_each_turn_and_match(tokenizer: tuple[str, Any]) -> None:
    kind, tok = tokenizer
    prefixes = PromptPrefixes(tok.backend_tokenizer)
    assert not prefixes.off
    rng = random.Random(1)
    before = _reused()
    for _ in range(6):
        messages = [("system", _words(rng, 600))]
        for _turn in range(5):
            messages.append(("user", _words(rng, rng.choice((1, 5, 40)))))
            text = _render(kind, messages)
            assert prefixes.ids(text) == _whole(tok, text), text[-200:]
            messages.append(("assistant", _words(rng, rng.choice((3, 30)))))
    # Every turn after a conversation's first reused the one before.
    assert _reused() - before > 6 * 4 * 500


def test_a_shared_system_prompt_with_other_endings_matches(tokenizer: tuple[str, Any]) -> None:
    kind, tok = tokenizer
    prefixes = PromptPrefixes(tok.backend_tokenizer)
    rng = random.Random(2)
    system = _words(rng, 800)
    for ending in AWKWARD * 3:
        question = ending + _words(rng, rng.choice((0, 2, 20)))
        for text in (
            _render(kind, [("system", system), ("user", question)]),
            _render(kind, [("system", system)], prompt=False) + question,
            _render(kind, [("system", system + ending)]),
        ):
            assert prefixes.ids(text) == _whole(tok, text), repr(text[-120:])


def test_random_texts_with_tokens_anywhere_match(tokenizer: tuple[str, Any]) -> None:
    kind, tok = tokenizer
    prefixes = PromptPrefixes(tok.backend_tokenizer)
    rng = random.Random(3)
    opening, closing = TURNS[kind]
    pieces = [opening.format(role="user"), closing, *AWKWARD, "<w>", " <sep> "]
    seen: list[str] = []
    for _ in range(150):
        if seen and rng.random() < 0.7:
            base = rng.choice(seen)
            text = base[: rng.randrange(len(base))] + rng.choice(pieces) + _words(rng, 30)
        else:
            text = "".join(rng.choice(pieces) + _words(rng, 60) for _ in range(8))
        seen.append(text)
        assert prefixes.ids(text) == _whole(tok, text), repr(text)


def test_a_prompt_asked_again_is_kept_longer_than_those_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What is kept is the most recently asked: a prompt asked again, exactly, outlives prompts
    first asked after it, once the room runs out."""
    from inferd.engines import prompt_prefixes

    tok = _chatml()
    prefixes = PromptPrefixes(tok.backend_tokenizer)
    rng = random.Random(4)
    texts = [_render("chatml", [("system", _words(rng, 600))]) for _ in range(4)]
    # Room for three of them.
    monkeypatch.setattr(prompt_prefixes, "KEPT_CHARS", sum(map(len, texts[:3])) + 10)
    for text in texts[:3]:
        prefixes.ids(text)
    before = _reused()
    prefixes.ids(texts[0])  # asked again: now the most recent
    assert _reused() - before == len(_whole(tok, texts[0]))
    prefixes.ids(texts[3])  # no room left: the least recent goes, texts[1]
    before = _reused()
    assert prefixes.ids(texts[0]) == _whole(tok, texts[0])
    assert _reused() - before == len(_whole(tok, texts[0]))  # still kept whole
    before = _reused()
    assert prefixes.ids(texts[1]) == _whole(tok, texts[1])
    assert _reused() - before == 0  # forgotten, tokenized afresh


def test_the_tokenizer_call_reuses_and_other_calls_are_untouched() -> None:
    from transformers import PreTrainedTokenizerFast

    tok = _chatml()
    prefixes = reuse_in(tok)
    assert prefixes is not None and isinstance(tok, PreTrainedTokenizerFast)
    rng = random.Random(4)
    system = _words(rng, 900)
    for question in ("What is a tide?", "Why is the sea salty?", "How deep?", "How cold?"):
        text = _render("chatml", [("system", system), ("user", question)])
        # How vLLM's renderer calls it.
        got = tok(text, add_special_tokens=False, truncation=True, max_length=100_000)
        assert got["input_ids"] == _whole(tok, text)
    # Past the limit, truncated by the tokenizer; offsets, and special tokens added, as before.
    cut = tok(text, add_special_tokens=False, truncation=True, max_length=50)
    assert cut["input_ids"] == _whole(tok, text)[:50]
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert len(offsets["offset_mapping"]) == len(offsets["input_ids"])
    assert tok("short", add_special_tokens=False)["input_ids"] == _whole(tok, "short")
    _checks_done()
    assert not prefixes.off


def _checks_done() -> None:
    for thread in threading.enumerate():
        if thread.name == "prompt-prefix-check":
            thread.join(60)


def _shouting(word: str) -> Any:
    """A tokenizer that changes `word` in a text before its Rust side sees it."""
    from transformers import PreTrainedTokenizerFast

    class Shouting(PreTrainedTokenizerFast):
        def _encode_plus(self, text: Any, *args: Any, **kwargs: Any) -> Any:
            return super()._encode_plus(text.replace(word, word.upper()), *args, **kwargs)

    return Shouting(tokenizer_object=_chatml().backend_tokenizer, eos_token="<|endoftext|>")


def test_a_tokenizer_whose_python_side_differs_is_left_as_it_is() -> None:
    tok, plain = _shouting("tide"), _shouting("tide")
    assert reuse_in(tok) is None
    system = _words(random.Random(5), 900)
    for question in ("one", "two"):
        text = _render("chatml", [("system", system), ("user", question)])
        assert tok(text, add_special_tokens=False) == plain(text, add_special_tokens=False)


def test_an_answer_that_differs_turns_reuse_off(caplog: pytest.LogCaptureFixture) -> None:
    """A difference the tries before reuse did not meet (a word they lack) is found by the
    checks of the first answers, and reuse stops."""
    tok, plain = _shouting("sea"), _shouting("sea")
    prefixes = reuse_in(tok)
    assert prefixes is not None
    system = "the sea " + _words(random.Random(6), 900)
    text = _render("chatml", [("system", system), ("user", "one")])
    tok(text, add_special_tokens=False)
    _checks_done()
    assert prefixes.off
    assert "reuse is off" in caplog.text
    for question in ("two", "three"):
        text = _render("chatml", [("system", system), ("user", question)])
        assert tok(text, add_special_tokens=False) == plain(text, add_special_tokens=False)
