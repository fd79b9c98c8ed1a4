"""Token ids of long prompts' leading parts, kept and reused: a prompt that starts as one seen
before is tokenized only from where the two part.

A chat's prompt is its whole conversation rendered through the template, tokenized afresh at
every turn, and an agent's starts with the same long instructions each time. The engine's
prefix cache skips their computation on the GPU, but not the tokenizer: vLLM's CPU build spent
14 ms of a 34 ms answer tokenizing a 6,000-token system prompt it had seen before (py-spy, 2-core
machine, benchmarks/results/vllm_h200_vs_serve.txt), a Rust tokenizer's pace on the host.

Where a prompt may be cut: right after an added token (`<|im_end|>`, `</s>`), which the
tokenizer matches in the raw text before anything else, so what precedes it is tokenized
without seeing what follows. A prompt's ids are then those of the longest such leading part
kept from an earlier prompt, then the rest tokenized after that added token's own text (so the
rest is seen as it follows it: no space or word-start marker a tokenizer puts at a text's start)
with that token's id dropped. Only added tokens matched in the raw text (not normalized), and
none that is part of another (`<|im` inside `<|im_start|>`) mark a cut.

A tokenizer is tried on prompts of its own added tokens before reuse is trusted (one whose
Python side does more than its Rust side is told apart there and left as it is), and its first
answers to long prompts are checked against a whole tokenization after they are given (checked
before answering, the first hits were slower than no reuse at all: H200, 8B model, 42-50 ms to
the first token, 29 ms for the hits after them): a difference turns reuse off, with a warning.
"""

from __future__ import annotations

import array
import copy
import logging
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from prometheus_client import Counter

log = logging.getLogger(__name__)

# Prompts shorter than this (characters) are tokenized whole: reuse would save less than its
# own look-up costs.
MIN_CHARS = 2000
# What is kept: the most recent prompts, up to this many characters in all.
KEPT_CHARS = 32 * 1024 * 1024
# Prompts compared with a new one, most recent first.
LOOKED_AT = 32
# Answers to long prompts checked against a whole tokenization (after they are given) before
# reuse is trusted.
CHECKED = 8

REUSED = Counter(
    "inferd_engine_prompt_tokens_reused",
    "Prompt tokens taken from an earlier prompt's tokenization rather than tokenized again",
)


@dataclass
class _Kept:
    ids: array.array[int]
    cuts: list[int]  # characters of the prompt up to each place it may be cut, ascending
    counts: list[int]  # the tokens up to each cut


class PromptPrefixes:
    """Ids of prompts for one tokenizer (a `tokenizers.Tokenizer`), reusing earlier prompts'
    leading parts. Safe to call from several threads."""

    def __init__(self, backend: Any, check: Callable[[str], list[int]] | None = None):
        self._backend = copy.deepcopy(backend)  # truncation and padding of our own: none
        self._backend.no_truncation()
        self._backend.no_padding()
        self._marks = _marks(self._backend)  # id -> its text
        self._check = check  # a whole tokenization, for the first answers
        self._checks_left = CHECKED if check is not None else 0
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._kept_chars = 0
        self._lock = threading.Lock()
        self.off = not self._marks

    def ids(self, text: str) -> list[int]:
        """`text`'s token ids as the tokenizer gives them without special tokens added."""
        ids = self._answer(text)
        with self._lock:
            check = self._checks_left > 0 and not self.off and len(text) >= MIN_CHARS
            self._checks_left -= check
        if check:  # off the answer's way: a check is a whole tokenization, what reuse saves
            threading.Thread(
                target=self._checked, args=(text, ids), name="prompt-prefix-check", daemon=True
            ).start()
        return ids

    def agrees(self, check: Callable[[str], list[int]]) -> bool:
        """Whether prompts made of this tokenizer's added tokens and text of several scripts,
        some of them sharing leading parts, get the ids `check` gives: tried once, before
        reuse is trusted with anything."""
        marks = list(self._marks.values())[:4]
        words = "The tide rose at 3.14 past noon;  naïve Café 数据 中心 🙂 don't e-mail #tag\n"
        body = "".join(mark + words * 6 for mark in marks * (MIN_CHARS // (len(words) * 6) + 1))
        endings = ("", " one more question", marks[-1] + "tail", "\n\n" + marks[0] + "x", " \t")
        texts = [body + ending for ending in endings] + [body[: len(body) // 2] + "cut short"]
        try:
            return all(self._answer(text, False) == list(check(text)) for text in texts)
        finally:
            with self._lock:
                self._forget()

    def _answer(self, text: str, counted: bool = True) -> list[int]:
        if self.off or len(text) < MIN_CHARS:
            return self._backend.encode(text, add_special_tokens=False).ids
        with self._lock:
            same = self._kept.get(text)
            if same is not None:  # seen again: the last to be forgotten
                self._kept.move_to_end(text)
            found = None if same is not None else self._longest(text)
        if same is not None:
            if counted:
                REUSED.inc(len(same.ids))
            return same.ids.tolist()
        kept = None
        if found is not None:
            earlier, cut = found
            kept = self._reused(text, earlier, cut)
            if kept is not None and counted:
                REUSED.inc(earlier.counts[cut])
        if kept is None:
            kept = self._tokenized(text)
        with self._lock:
            self._keep(text, kept)
        return kept.ids.tolist()

    def _longest(self, text: str) -> tuple[_Kept, int] | None:
        """The kept prompt sharing the longest leading part with `text` that ends at a cut,
        and that cut's index."""
        best: tuple[_Kept, int] | None = None
        best_end = MIN_CHARS // 2  # shorter shared parts save too little to bother
        head = text[:64]
        for seen in islice(reversed(self._kept), LOOKED_AT):
            kept = self._kept[seen]
            if not seen.startswith(head) or not kept.cuts or kept.cuts[-1] <= best_end:
                continue
            # The last cut up to which both agree (agreeing up to a cut, they agree up to every
            # earlier one).
            low, high = -1, bisect_right(kept.cuts, len(text)) - 1
            while low < high:
                middle = (low + high + 1) // 2
                end = kept.cuts[middle]
                if text.startswith(seen[:end]):
                    low = middle
                else:
                    high = middle - 1
            if low >= 0 and kept.cuts[low] > best_end:
                best, best_end = (kept, low), kept.cuts[low]
        return best

    def _reused(self, text: str, kept: _Kept, cut: int) -> _Kept | None:
        """`text`'s ids from `kept`'s up to its cut `cut`, the rest tokenized after the added
        token there; None where that token does not open the rest as it did (it was part of a
        longer match, or one that wants a word's edge)."""
        end, count = kept.cuts[cut], kept.counts[cut]
        mark = kept.ids[count - 1]
        mark_text = self._marks[mark]
        tail = mark_text + text[end:]
        rest = self._backend.encode(tail, add_special_tokens=False)
        if not rest.ids or rest.ids[0] != mark:
            return None
        ids = kept.ids[:count]
        ids.extend(rest.ids[1:])
        cuts, counts = kept.cuts[: cut + 1], kept.counts[: cut + 1]
        shift = end - len(mark_text)
        for index, at in self._cuts(tail, rest):
            if index > 0:
                cuts.append(shift + at)
                counts.append(count + index)
        return _Kept(ids, cuts, counts)

    def _tokenized(self, text: str) -> _Kept:
        whole = self._backend.encode(text, add_special_tokens=False)
        found = self._cuts(text, whole)
        cuts = [at for _, at in found]
        counts = [index + 1 for index, _ in found]
        return _Kept(array.array("I", whole.ids), cuts, counts)

    def _cuts(self, text: str, encoding: Any) -> list[tuple[int, int]]:
        """Where `text` may be cut: (the index of the added token before it, the characters
        up to it). An added token's id the model gave for text it does not know (BERT's
        `[UNK]`) is no cut: its span is not the token's own text."""
        found = []
        for index, token in enumerate(encoding.ids):
            mark = self._marks.get(token)
            if mark is not None:
                start, end = encoding.offsets[index]
                if text[start:end].strip() == mark:  # a token taking spaces spans them
                    found.append((index, end))
        return found

    def _checked(self, text: str, ids: list[int]) -> None:
        assert self._check is not None
        whole = list(self._check(text))
        if whole == ids:
            return
        with self._lock:
            self.off = True
            self._forget()
        log.warning(
            "prompt tokens reused from an earlier prompt differed from the whole prompt's "
            "tokenization (%d tokens against %d): reuse is off for this model",
            len(ids),
            len(whole),
        )

    def _forget(self) -> None:
        self._kept.clear()
        self._kept_chars = 0

    def _keep(self, text: str, kept: _Kept) -> None:
        if self.off or not kept.cuts:
            return
        if text in self._kept:
            self._kept.move_to_end(text)
            return
        self._kept[text] = kept
        self._kept_chars += len(text)
        while self._kept_chars > KEPT_CHARS and len(self._kept) > 1:
            old, _ = self._kept.popitem(last=False)
            self._kept_chars -= len(old)


def _marks(backend: Any) -> dict[int, str]:
    """The added tokens a prompt may be cut after: matched in the raw text (not normalized),
    each tokenizing alone to itself, none part of another."""
    if getattr(backend, "encode_special_tokens", False):
        added = {}  # special tokens are tokenized as text: only plain added ones are matched
    else:
        added = backend.get_added_tokens_decoder()
    texts = {token.content for token in added.values() if token.content}
    marks = {}
    for token_id, token in added.items():
        content = token.content
        if not content or token.normalized:
            continue
        if any(content in other for other in texts if other != content):
            continue
        if backend.encode(content, add_special_tokens=False).ids != [token_id]:
            continue
        marks[token_id] = content
    return marks


def reuse_in(tokenizer: Any) -> PromptPrefixes | None:
    """Makes calls of `tokenizer` (a transformers tokenizer backed by `tokenizers`) on one long
    text without special tokens added (how vLLM's renderer tokenizes a rendered chat) reuse
    earlier prompts' leading parts; other calls go on as before. None where it cannot: a
    tokenizer of another kind, or one with no added tokens to cut after."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "split_special_tokens", False):
        return None
    base = type(tokenizer)
    call = base.__call__
    # Checks run beside the engine's own calls: on a copy, as transformers' tokenizers set
    # their Rust side's truncation at every call.
    checker = copy.deepcopy(tokenizer)

    def whole(text: str) -> list[int]:
        return list(checker(text, add_special_tokens=False)["input_ids"])

    prefixes = PromptPrefixes(backend, check=whole)
    if prefixes.off:
        return None
    if not prefixes.agrees(whole):
        log.info("prompt tokens are not reused: this tokenizer does more than its Rust side")
        return None
    from transformers import BatchEncoding

    class Reusing(base):  # type: ignore[misc, valid-type]
        def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
            if (
                not prefixes.off
                and not args
                and isinstance(text, str)
                and len(text) >= MIN_CHARS
                and kwargs.get("add_special_tokens", True) is False
                and kwargs.keys() <= _PLAIN
            ):
                ids = prefixes.ids(text)
                limit = kwargs.get("max_length")
                if not (kwargs.get("truncation") and limit is not None and len(ids) > limit):
                    return BatchEncoding({"input_ids": ids, "attention_mask": [1] * len(ids)})
            return call(self, text, *args, **kwargs)

    Reusing.__name__, Reusing.__qualname__ = base.__name__, base.__qualname__
    tokenizer.__class__ = Reusing
    return prefixes


# The arguments of a call whose answer is the ids alone (past the limit, the tokenizer truncates).
_PLAIN = {"add_special_tokens", "truncation", "max_length"}
