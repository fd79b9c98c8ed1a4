"""Grammar-constrained sampling inside the transformers engine's decode loops, by llguidance.

transformers' batching loop applies per-request logits processors of its own kind
(`ContinuousBatchingLogitsProcessor`): before each step it asks every processor for a value per
sequence that gets a new token, and during the step hands that back beside the logits. A request
with a grammar (JSON output, a forced tool call) gets a matcher here; before each step the
matcher takes the tokens the sequence produced since the last one and computes which tokens may
come next, and the step masks out the rest before temperature, top-k and top-p see the logits.
Sequences without a grammar are left alone, and a step with none of them costs nothing.

Masks are computed on the host between steps, from each sequence's tokens so far: the loop must
have the last step's token before it schedules the next (no asynchronous batching), and the
masking runs eagerly (no CUDA graph captures it). The static decoder (static_decode) asks for
the same masks through `sequence`, `new_masks` and `fill`, and applies them inside its graph.
"""

from __future__ import annotations

import threading
from typing import Any

import llguidance
import llguidance.hf
import llguidance.torch
import torch
from transformers import LogitsProcessor
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from inferd.errors import InvalidRequest

Json = dict[str, Any]

# Whitespace a weak model could repeat until max_tokens is not allowed between JSON tokens.
_COMPACT: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class _Sequence:
    """One constrained sequence: its matcher and how many of its tokens it has taken."""

    __slots__ = ("matcher", "taken")

    def __init__(self, matcher: Any):
        self.matcher = matcher
        self.taken = 0


class GrammarMasks(ContinuousBatchingLogitsProcessor):
    """The batching loop's processor that keeps each constrained sequence to its grammar."""

    supported_kwargs: dict[str, type] = {}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, tokenizer: Any, vocab: int, eos: list[int]):
        # Built once per model: llguidance walks the whole vocabulary (~0.5 s for 50k tokens).
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab, eos_token=[t for t in eos if t >= 0] or None
        )
        self._eos = [t for t in eos if 0 <= t < vocab]
        self._vocab = vocab  # the width of the logits, which the tokenizer's length may not be
        self._sequences: dict[str, _Sequence] = {}
        self._lock = threading.Lock()
        self._masks: torch.Tensor | None = None  # this step's rows, or None: nothing to mask
        self._word, self._bit = bit_positions(vocab, torch.device("cpu"))
        self._on: torch.device | None = None
        self._executor = llguidance.LLExecutor()

    # from the server's event loop --------------------------------------------------------

    def compile(self, response_format: Json) -> str:
        """The grammar of an OpenAI `response_format` (json_object or json_schema), checked
        against this model's vocabulary."""
        grammar = _json_grammar(response_format)
        error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self._tokenizer
        )
        if error:
            raise InvalidRequest(
                f"response_format cannot be followed: {messages[0]}", param="response_format"
            )
        return grammar

    def add(self, request_id: str, grammar: str) -> None:
        """Constrain the sequence `request_id` (before it is added to the batch)."""
        matcher = llguidance.LLMatcher(self._tokenizer, grammar)
        with self._lock:
            self._sequences[request_id] = _Sequence(matcher)

    def drop(self, request_id: str) -> None:
        with self._lock:
            self._sequences.pop(request_id, None)

    # from the batching loop's thread ----------------------------------------------------

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        with self._lock:
            found = [self._sequences.get(r.state.request_id) for r in requests_with_new_token]
        constrained = [
            (row, sequence, _new_tokens(requests_with_new_token[row].state, sequence.taken))
            for row, sequence in enumerate(found)
            if sequence is not None
        ]
        masks = None
        if constrained:
            masks = self.new_masks(len(found))
            self.fill(masks, constrained)
        self._masks = masks
        return torch.zeros(len(requests_with_new_token), dtype=torch.int32)

    def sequence(self, request_id: str) -> _Sequence | None:
        """The constrained sequence `request_id`, or None if it has no grammar."""
        with self._lock:
            return self._sequences.get(request_id)

    def new_masks(self, rows: int) -> torch.Tensor:
        """Bitmasks for `rows` sequences that allow every token (-1: every bit set), so the
        rows of unconstrained sequences mask nothing."""
        return torch.full(
            llguidance.torch.get_bitmask_shape(rows, self._vocab), -1, dtype=torch.int32
        )

    def fill(self, masks: torch.Tensor, rows: list[tuple[int, _Sequence, list[int]]]) -> None:
        """Each constrained sequence's allowed next tokens into its row of `masks`, after its
        matcher takes the sequence's tokens since the last call: (row, sequence, new tokens)."""
        pending = []
        for row, sequence, new in rows:
            if self._advance(sequence, new):
                pending.append((sequence.matcher, row))
            else:
                self._eos_only(masks, row)
        if len(pending) == 1:
            llguidance.torch.fill_next_token_bitmask(pending[0][0], masks, pending[0][1])
        elif pending:  # on llguidance's threads, without the GIL
            llguidance.torch.fill_next_token_bitmask_par(self._executor, pending, masks)

    def _eos_only(self, masks: torch.Tensor, row: int) -> None:
        """A matcher past its end (EOS again, under ignore_eos) or astray: only EOS now."""
        masks[row].zero_()
        for token in self._eos:
            masks[row, token // 32] |= _bit(token % 32)

    @staticmethod
    def _advance(sequence: _Sequence, new: list[int]) -> bool:
        """Feed the matcher the sequence's tokens since the last step; False if it went
        astray."""
        matcher = sequence.matcher
        sequence.taken += len(new)
        if new and not matcher.is_error():
            matcher.consume_tokens(new)
        return not matcher.is_error()

    def __call__(self, scores: torch.FloatTensor, tensor_arg: torch.Tensor) -> torch.FloatTensor:
        return scores if self._masks is None else self._apply(scores, self._masks)

    def _apply(self, scores: torch.FloatTensor, masks: torch.Tensor) -> torch.FloatTensor:
        if self._on != scores.device:
            self._word, self._bit = self._word.to(scores.device), self._bit.to(scores.device)
            self._on = scores.device
        words = masks.to(scores.device, non_blocking=True)
        forbidden = ~allowed(words, self._word, self._bit)
        rows = scores.size(0)
        if rows > forbidden.size(0):  # padded rows, which no sequence reads
            padding = forbidden.new_zeros(rows - forbidden.size(0), 1)
            forbidden = torch.cat([forbidden, padding.expand(-1, forbidden.size(1))])
        return scores.masked_fill(forbidden[:rows], -torch.inf)  # type: ignore[return-value]

    # for `model.generate` (a vision model's one sequence) ------------------------------

    def for_generate(self, grammar: str, prompt_length: int) -> Any:
        """A logits processor holding `generate`'s one sequence to `grammar`; it must come
        before temperature, top-k and top-p in the processors' list."""
        sequence = _Sequence(llguidance.LLMatcher(self._tokenizer, grammar))
        owner = self

        class Masked(LogitsProcessor):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
                masks = torch.full(
                    llguidance.torch.get_bitmask_shape(1, owner._vocab), -1, dtype=torch.int32
                )
                new = input_ids[0, prompt_length + sequence.taken :].tolist()
                if owner._advance(sequence, new):
                    llguidance.torch.fill_next_token_bitmask(sequence.matcher, masks, 0)
                else:
                    owner._eos_only(masks, 0)
                return owner._apply(scores, masks)

        return Masked()


def _json_grammar(response_format: Json) -> str:
    """llguidance's grammar for an OpenAI `response_format` (json_object or json_schema)."""
    kind = response_format.get("type")
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is None:
            schema = {}  # OpenAI's schema is optional: any JSON value
        if not isinstance(schema, dict | bool):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON Schema object",
                param="response_format",
            )
    else:
        raise InvalidRequest(
            f"response_format type {kind!r} is not one of text, json_object, json_schema",
            param="response_format",
        )
    return str(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_COMPACT))


def bit_positions(vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token's bit lies in llguidance's bitmask: its 32-bit word and its bit there."""
    index = torch.arange(vocab, device=device, dtype=torch.int32)
    return (index // 32).long(), index % 32


def allowed(words: torch.Tensor, word: torch.Tensor, bit: torch.Tensor) -> torch.Tensor:
    """Which tokens llguidance's bitmasks `words` (a row per sequence) allow, as booleans."""
    return ((words[:, word] >> bit) & 1) == 1


def _bit(index: int) -> int:
    """Bit `index` of an int32 word, as a signed value (bit 31 is the sign)."""
    return (1 << index) - (1 << 32 if index == 31 else 0)


def _new_tokens(state: Any, taken: int) -> list[int]:
    """A sequence's generated tokens after the first `taken`, counted as transformers' own
    output counts them (a sequence moved out of the cache and back carries its earlier tokens
    in its prompt)."""
    true_prompt = getattr(state, "_true_initial_tokens", 0)
    if true_prompt:
        earlier = state.initial_tokens[true_prompt:]
        if taken < len(earlier):
            return list(earlier[taken:]) + list(state.generated_tokens)
        taken -= len(earlier)
    return list(state.generated_tokens[taken:])


def install(manager: Any, masks: GrammarMasks) -> None:
    """Put `masks` first among the batching manager's logits processors (before top-k could
    keep only tokens the grammar forbids). Must run before the manager starts, which sizes
    its per-processor argument rows from the list."""
    processors = manager.logit_processor
    processors.logits_processor.insert(0, masks)
    processors.tensors_required += 1
    processors.do_processing = True
    processors._retrieve_processors_kwargs()
