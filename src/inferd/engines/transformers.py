"""Causal LMs on transformers (safetensors, CPU or CUDA), served with continuous batching.

A decoder runs one generation loop: a request joins the running batch between decode steps and
leaves when it ends, so concurrent requests share every forward pass instead of waiting for each
other. On a GPU it is the static decoder (static_decode: a fixed KV cache and a decode step
compiled into CUDA graphs); on a CPU, or for a model with a sliding-window or hybrid cache,
transformers' own continuous batching over a paged cache (paged_decode); the launch option
`kv_cache` picks one. This module turns OpenAI requests into the decoder's requests
(per-request temperature, top_p, top_k) and its tokens back into OpenAI answers: stop strings,
max_tokens, usage, logprobs, cancellation.
JSON output and forced tool calls are constrained by a grammar inside that loop (grammar);
calls a model writes on its own are read from its text in its family's format (tool_formats).
Image-text-to-text models (a catalogue entry with `vision`) take images in chat messages;
their pixels do not fit the batching loop, so they answer one request at a time (hf_vision).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any, NamedTuple

import orjson

from inferd.engines import forced_calls, hf_vision, prompt_prefixes, reasoning, tool_formats
from inferd.engines.base import Engine, Json, flag, json_output
from inferd.engines.decoding import Decoder, Output, Request, Sampling
from inferd.errors import InvalidRequest, UnsupportedOperation

# Requests the continuous-batching loop takes at once unless max_requests_per_batch says;
# later ones wait in the server's queue.
_DEFAULT_SLOTS = 64
# The static decoder's rows (every step computes all of them) and tokens a row holds.
_STATIC_ROWS = 32
_STATIC_SLOTS = 4096

# How a tool call is read from an answer constrained to calls of the request's tools.
_FORCED = "forced"

# What no sampling field asks for: OpenAI's defaults.
_TEMPERATURE, _TOP_P = 1.0, 1.0


class TransformersEngine(Engine):
    name = "transformers"
    model_types = frozenset({"LLM"})
    formats = frozenset({"pytorch"})
    requires = ("transformers", "torch", "llguidance")
    extra = "transformers"
    cpu_options = {"device": "cpu"}

    def load(self) -> None:
        import torch
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        options = dict(self.config.options)
        device = options.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = options.pop("dtype", "auto")
        trust_remote_code = flag(options, "trust_remote_code")
        thinking = options.pop("enable_thinking", None)
        # The launch's thinking switch is every request's default; a request may say otherwise.
        self._template_kwargs = {} if thinking is None else {"enable_thinking": bool(thinking)}
        batching: dict[str, Any] = {
            key: options.pop(key)
            for key in ("max_batch_tokens", "num_blocks", "page_size", "max_requests_per_batch")
            if key in options
        }
        kv_cache = options.pop("kv_cache", None)
        if kv_cache not in (None, "static", "paged"):
            raise InvalidRequest(
                f"kv_cache {kv_cache!r} is not one of static (a compiled decode over a fixed "
                "cache, the default on GPUs) or paged (continuous batching, the default on CPUs)",
                param="kv_cache",
            )
        max_model_len = options.pop("max_model_len", None)
        self._refuse_unknown(options)
        family = self.config.family
        self._vision = "vision" in family.get("model_ability", [])
        if self._vision and (batching or kv_cache or max_model_len):
            option = (
                next(iter(batching)) if batching else "kv_cache" if kv_cache else "max_model_len"
            )
            raise InvalidRequest(
                f"{option} is a batching option; a vision model on transformers answers one "
                "request at a time",
                param=option,
            )
        on_gpu = not str(device).startswith("cpu")
        paged_only = [key for key in batching if key != "max_requests_per_batch"]
        static = kv_cache == "static" or (kv_cache is None and on_gpu and not paged_only)
        if static:
            if paged_only:
                raise InvalidRequest(
                    f"{paged_only[0]} sizes the paged cache; launch with kv_cache=paged to use "
                    "it (the static cache is sized by max_requests_per_batch and max_model_len)",
                    param=paged_only[0],
                )
        elif max_model_len is not None:
            raise InvalidRequest(
                "max_model_len sizes the static cache; the paged one grows as needed "
                "(num_blocks, page_size)",
                param="max_model_len",
            )
        if not on_gpu and not self._vision and not static:
            # Without a GPU to measure, the cache would be sized for one; a few thousand tokens
            # of KV cache keep a CPU machine's memory in hand.
            batching.setdefault("num_blocks", 64)
            batching.setdefault("page_size", 64)
            batching.setdefault("max_batch_tokens", 512)

        path = self.config.model_path
        loading = {"trust_remote_code": trust_remote_code, "local_files_only": True}
        if self._vision:
            # The processor renders the template and turns images into the model's inputs.
            self._processor = AutoProcessor.from_pretrained(path, **loading)
            self._tokenizer = self._processor.tokenizer
            if family.get("chat_template"):
                self._processor.chat_template = family["chat_template"]
            model_class: Any = AutoModelForImageTextToText
        else:
            self._tokenizer = AutoTokenizer.from_pretrained(path, **loading)
            if family.get("chat_template"):
                self._tokenizer.chat_template = family["chat_template"]
            # A chat's turns resend the conversation: tokenized only past what was seen.
            prompt_prefixes.reuse_in(self._tokenizer)
            model_class = AutoModelForCausalLM
        self._model = model_class.from_pretrained(
            path, dtype=dtype, device_map=device, **loading
        ).eval()
        self._context = int(
            getattr(self._model.config.get_text_config(), "max_position_embeddings", None)
            or family.get("context_length", 4096)
        )
        self._own_context = self._context
        eos = self._model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self._tokenizer.eos_token_id is not None:
            eos.append(self._tokenizer.eos_token_id)
        self._eos = sorted({*eos, *family.get("stop_token_ids", [])}) or [-1]
        self._stops: list[str] = list(family.get("stop") or [])
        self._tags = reasoning.tags_of(family)
        self._tool_format = tool_formats.format_of(family, self.config.model_name)
        markers = tool_formats.MARKERS.get(self._tool_format or "", ())
        self._markers = _token_ids(self._tokenizer, markers)
        # top_k's "no limit" is the width of the logits, which the tokenizer's length may not be.
        self._vocab = int(self._model.get_output_embeddings().weight.shape[0])
        self._pad = self._tokenizer.pad_token_id or self._eos[0]
        # llguidance's masks, where the tokenizer allows them (else None, and why not).
        self._grammar, self._no_grammar = _grammar_masks(self._tokenizer, self._vocab, self._eos)
        self._decoder: Decoder | None = None
        if self._vision:
            self._slots = 1
            self._generating = threading.Lock()
            return
        if static:
            self._decoder = self._static_decoder(
                kv_cache == "static", batching.get("max_requests_per_batch"), max_model_len, on_gpu
            )
        if self._decoder is None:
            from inferd.engines.paged_decode import PagedDecoder

            self._decoder = PagedDecoder(self._model, self._eos, self._pad, batching, self._grammar)
            self._slots = int(batching.get("max_requests_per_batch") or _DEFAULT_SLOTS)

    def _static_decoder(
        self, asked: bool, rows: Any, max_model_len: Any, on_gpu: bool
    ) -> Decoder | None:
        """The static decoder, sized to the GPU's free memory; None (the paged one instead)
        where the model cannot use it and no one asked for it."""
        import torch

        from inferd.engines import static_decode

        why_not = static_decode.supported(self._model)
        if why_not is not None:
            if asked:
                raise UnsupportedOperation(
                    f"kv_cache=static is not available for this model: {why_not}; launch with "
                    "kv_cache=paged",
                    param="kv_cache",
                )
            return None
        rows = int(rows or _STATIC_ROWS)
        model_len = self._context
        slots = min(model_len, int(max_model_len or _STATIC_SLOTS))
        if max_model_len is not None and int(max_model_len) > model_len:
            raise InvalidRequest(
                f"max_model_len {max_model_len} is beyond this model's context of {model_len}",
                param="max_model_len",
            )
        per_token = static_decode.kv_bytes_per_token(self._model)
        if on_gpu:
            free, _ = torch.cuda.mem_get_info(self._model.device)
            # Room beside the cache for the prefill's activations and the sampler's logits.
            budget = int(free * 0.8)
            fitting = budget // (rows * per_token)
            if fitting < slots:
                if max_model_len is not None or fitting < 256:
                    raise InvalidRequest(
                        f"a static cache of {rows} rows x {slots} tokens needs "
                        f"{rows * slots * per_token / 2**30:.1f} GiB and "
                        f"{budget / 2**30:.1f} GiB of the GPU is free for it; lower "
                        "max_requests_per_batch or max_model_len",
                        param="max_model_len"
                        if max_model_len is not None
                        else "max_requests_per_batch",
                    )
                slots = int(fitting)
        decoder = static_decode.StaticDecoder(
            self._model, rows, slots, self._grammar, compile=on_gpu
        )
        decoder.start()
        self._context, self._own_context = slots, model_len
        self._slots = rows
        return decoder

    def slots(self) -> int:
        return self._slots

    def close(self) -> None:
        if self._decoder is not None:
            with contextlib.suppress(Exception):
                self._decoder.stop()

    # requests ------------------------------------------------------------------------

    async def chat(self, request: Json) -> Json:
        request, calls = self._with_tools(request)
        prompt = self._chat_prompt(request)
        answer = await _whole(self._generate(request, prompt, chat=True))
        if calls == _FORCED:
            return forced_calls.as_calls(answer)
        if self._tags is not None and not json_output(request):
            opened = reasoning.opens(prompt.text, self._tags)
            answer = reasoning.split_answer(answer, self._tags, opened)
        return tool_formats.as_calls(answer, calls, request.get("tools")) if calls else answer

    def chat_stream(self, request: Json) -> AsyncIterator[Json]:
        request, calls = self._with_tools(request)
        prompt = self._chat_prompt(request)
        chunks = self._generate(request, prompt, chat=True, stream=True)
        if calls == _FORCED:
            return forced_calls.stream_as_calls(chunks)
        if self._tags is not None and not json_output(request):
            chunks = reasoning.split_chunks(
                chunks, self._tags, reasoning.opens(prompt.text, self._tags)
            )
        if calls:
            return tool_formats.stream_as_calls(chunks, calls, request.get("tools"))
        return chunks

    async def complete(self, request: Json) -> Json:
        return await _whole(self._generate(request, self._text_prompt(request), chat=False))

    def complete_stream(self, request: Json) -> AsyncIterator[Json]:
        return self._generate(request, self._text_prompt(request), chat=False, stream=True)

    def _with_tools(self, request: Json) -> tuple[Json, str | None]:
        """The request as the model is to see it, and how the calls in its answer are read:
        forced (the grammar makes the answer a call) or the family's own format."""
        if not request.get("tools"):
            return request, None
        if request.get("tool_choice") == "none":
            return {k: v for k, v in request.items() if k not in ("tools", "tool_choice")}, None
        if forced_calls.forced(request):  # the call's schema stands in for response_format
            if self._grammar is None:
                raise UnsupportedOperation(
                    "tool_choice required (or a named function) constrains the answer to a call, "
                    f"which this model's tokenizer does not allow here: {self._no_grammar}",
                    param="tool_choice",
                )
            return forced_calls.constrain(request), _FORCED
        if self._tool_format not in tool_formats.READABLE:
            raise UnsupportedOperation(
                "tool_choice auto needs calls this engine can read from the text: "
                f"{' or '.join(tool_formats.READABLE)} formats, by the model's family; "
                f"{self.config.model_name!r} writes {self._tool_format or 'no known format'}. "
                'Ask for tool_choice "required" or a named function (the answer is then '
                "constrained to a call), or launch the model on vLLM or llama.cpp",
                param="tool_choice",
            )
        return request, self._tool_format

    def _chat_prompt(self, request: Json) -> _Prompt:
        self._refuse_unsupported(request)
        if not self._tokenizer.chat_template:
            raise UnsupportedOperation(
                f"model {self.config.model_uid!r} has no chat template; use /v1/completions "
                "or register it with a chat_template",
                param="messages",
            )
        kwargs = {**self._template_kwargs, **(request.get("chat_template_kwargs") or {})}
        if request.get("tools"):
            kwargs["tools"] = request["tools"]
        if self._vision:
            messages = hf_vision.processor_messages(_template_messages(request["messages"]))
            inputs = self._processor.apply_chat_template(
                messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                **kwargs,
            ).to(self._model.device)
            for name, value in inputs.items():  # pixels in the model's own precision
                if value.is_floating_point():
                    inputs[name] = value.to(self._model.dtype)
            ids = inputs["input_ids"][0].tolist()
            return _Prompt(ids, str(self._tokenizer.decode(ids[-16:])), inputs)
        # Rendered as text first, to see whether it opens a thinking block, then tokenized
        # as apply_chat_template would (the template writes the special tokens itself).
        text = str(
            self._tokenizer.apply_chat_template(
                _template_messages(request["messages"]),
                add_generation_prompt=True,
                tokenize=False,
                **kwargs,
            )
        )
        return _Prompt(list(self._tokenizer(text, add_special_tokens=False)["input_ids"]), text)

    def _text_prompt(self, request: Json) -> _Prompt:
        self._refuse_unsupported(request)
        prompt = request["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return _Prompt(list(prompt), "")
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise UnsupportedOperation(
                    "the transformers engine takes one prompt per request", param="prompt"
                )
            prompt = prompt[0]
        return _Prompt(list(self._tokenizer(prompt)["input_ids"]), prompt)

    def _refuse_unsupported(self, request: Json) -> None:
        engine = "on the transformers engine"
        if json_output(request) and self._grammar is None:
            raise UnsupportedOperation(
                f"constrained JSON output is not available {engine} here: {self._no_grammar}",
                param="response_format",
            )
        if request.get("seed") is not None:
            raise UnsupportedOperation(
                f"per-request seeds are not available {engine}: requests share one sampler",
                param="seed",
            )
        if request.get("top_logprobs"):
            raise UnsupportedOperation(
                f"top_logprobs are not available {engine}; logprobs are", param="top_logprobs"
            )
        if self._vision and request.get("logprobs"):
            raise UnsupportedOperation(
                f"logprobs are not available for a vision model {engine}", param="logprobs"
            )

    async def _generate(
        self, request: Json, given: _Prompt, chat: bool, stream: bool = False
    ) -> AsyncIterator[Json]:
        prompt = given.ids
        if len(prompt) >= self._context:
            raise InvalidRequest(
                f"the prompt is {len(prompt)} tokens; {self._context_said()}",
                param="messages" if chat else "prompt",
            )
        room = self._context - len(prompt)
        max_tokens = request.get("max_tokens") or room
        if max_tokens > room:
            raise InvalidRequest(
                f"max_tokens {max_tokens} does not fit: the prompt is {len(prompt)} tokens and "
                f"{self._context_said()}, which leaves {room}",
                param="max_tokens",
            )
        n = int(request.get("n") or 1)
        stops = request.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        sampling = self._sampling(request)
        shape = _Shape(self.config.model_uid, chat, stream, bool(request.get("logprobs")))
        eos = [-1] if request.get("ignore_eos") else self._eos
        stops += self._stops
        constraint = None
        if json_output(request):  # off the event loop: a large schema takes a while
            constraint = await asyncio.to_thread(self._grammar.compile, request["response_format"])
        # The special tokens a family writes its calls with stay in the text they are read from.
        keep = self._markers if chat and request.get("tools") else {}
        streams = [
            self._one(given, max_tokens, stops, sampling, eos, stream, constraint, keep)
            for _ in range(n)
        ]
        if stream:
            merged = _merge(streams, shape)
            try:
                async for chunk in merged:
                    yield chunk
            finally:
                await merged.aclose()  # closing this generator must reach the sequences now
            if (request.get("stream_options") or {}).get("include_usage"):
                yield shape.usage_chunk()
            return
        finals = await asyncio.gather(*(_last(s) for s in streams))
        yield shape.whole(finals)

    def _context_said(self) -> str:
        if self._context < self._own_context:
            return (
                f"this launch holds {self._context} tokens a sequence (max_model_len; the "
                f"model's context is {self._own_context})"
            )
        return f"this model's context is {self._context}"

    def _sampling(self, request: Json) -> Sampling:
        temperature = request.get("temperature")
        temperature = _TEMPERATURE if temperature is None else float(temperature)
        top_k = int(request.get("top_k") or 0) or self._vocab
        if temperature == 0:  # greedy: only the likeliest token survives
            return Sampling(temperature=1.0, top_p=1.0, top_k=1)
        top_p = request.get("top_p")
        return Sampling(
            temperature=temperature,
            top_p=_TOP_P if top_p is None else float(top_p),
            top_k=min(top_k, self._vocab),
        )

    async def _one(
        self,
        prompt: _Prompt,
        max_tokens: int,
        stops: list[str],
        sampling: Sampling,
        eos: list[int],
        stream: bool,
        constraint: str | None,
        keep: dict[int, str],
    ) -> AsyncGenerator[_Step, None]:
        """One sequence: its text as it grows, ending at EOS, a stop string or max_tokens."""
        # Token by token only where someone reads them (a stream) or a stop string may end
        # the sequence early; a whole answer otherwise arrives once.
        if prompt.inputs is not None:
            source = self._generated(prompt.inputs, max_tokens, sampling, eos, constraint)
        else:
            streaming = stream or bool(stops)
            source = self._batched(prompt.ids, max_tokens, sampling, eos, streaming, constraint)
        text, sent = "", 0
        detokenizer = _Detokenizer(self._tokenizer, set(eos), keep)
        async with contextlib.aclosing(source):
            async for tokens, finished, logprobs in source:
                text += detokenizer.add(tokens, final=finished)
                reason = None
                cut = _first_stop(text, stops, sent)
                if cut is not None:
                    text, reason, finished = text[:cut], "stop", True
                elif finished:
                    reason = "length" if len(tokens) >= max_tokens else "stop"
                elif _partial_stop(text, stops):
                    continue  # hold back what could be the start of a stop string
                yield _Step(text[sent:], reason, len(prompt.ids), len(tokens), logprobs, tokens)
                sent = len(text)
                if finished:
                    return  # closing the source stops a sequence a stop string ended

    async def _batched(
        self,
        prompt: list[int],
        max_tokens: int,
        sampling: Sampling,
        eos: list[int],
        streaming: bool,
        constraint: str | None,
    ) -> AsyncGenerator[tuple[list[int], bool, list[float]], None]:
        """A sequence in the running batch: its tokens, whether it is done, logprobs."""
        assert self._decoder is not None
        request_id = uuid.uuid4().hex
        outputs: asyncio.Queue[Output] = asyncio.Queue()
        if constraint is not None:
            self._grammar.add(request_id, constraint)
        try:
            self._decoder.submit(
                Request(request_id, prompt, max_tokens, sampling, eos, streaming),
                outputs.put_nowait,
            )
        except BaseException:
            self._forget(request_id)
            raise
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                if output.error:
                    raise RuntimeError(f"generation failed: {output.error}")
                finished = output.finished
                yield output.tokens, finished, output.logprobs
        finally:
            if not finished:
                self._decoder.cancel(request_id)  # a stop string, abort or disconnect
            self._forget(request_id)

    async def _generated(
        self,
        inputs: Any,
        max_tokens: int,
        sampling: Sampling,
        eos: list[int],
        constraint: str | None,
    ) -> AsyncGenerator[tuple[list[int], bool, list[float]], None]:
        """A vision model's sequence, from `generate` (no logprobs on this path)."""
        from transformers import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        greedy = sampling.top_k == 1
        settings: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "do_sample": not greedy,
            "eos_token_id": None if eos == [-1] else eos,
            "pad_token_id": self._pad,
        }
        if constraint is None:
            settings.update(sampling._asdict())
        else:
            # The grammar's mask first: top-k or top-p could keep only tokens it forbids.
            length = int(inputs["input_ids"].shape[1])
            processors = [self._grammar.for_generate(constraint, length)]
            if not greedy:
                processors += [
                    TemperatureLogitsWarper(sampling.temperature),
                    TopKLogitsWarper(sampling.top_k),
                    TopPLogitsWarper(sampling.top_p),
                ]
            settings.update(temperature=1.0, top_k=None, top_p=1.0)
            settings["logits_processor"] = LogitsProcessorList(processors)
        async for tokens, finished in hf_vision.generated(
            self._model, inputs, settings, self._generating
        ):
            yield tokens, finished, []

    def _forget(self, request_id: str) -> None:
        assert self._decoder is not None
        if self._grammar is not None:
            self._grammar.drop(request_id)
        self._decoder.forget(request_id)


def _grammar_masks(tokenizer: Any, vocab: int, eos: list[int]) -> tuple[Any, str]:
    """llguidance's masks for this model, or None and why not."""
    from inferd.engines import grammar

    try:
        return grammar.GrammarMasks(tokenizer, vocab, eos), ""
    except ValueError as exc:  # a tokenizer llguidance cannot read (WordPiece, ...)
        return None, str(exc)


def _template_messages(messages: list[Json]) -> list[Json]:
    """Messages as chat templates expect them: a call's arguments as an object (OpenAI sends
    them as JSON text, which a template's `tojson` would quote a second time)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [_with_object_arguments(c) for c in calls]}
        out.append(message)
    return out


def _with_object_arguments(call: Json) -> Json:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return call  # left as written; the template shows it as text
        return {**call, "function": {**function, "arguments": arguments}}
    return call


class _Prompt(NamedTuple):
    """A request's prompt: its tokens, its text (to see how it ends), and for a vision model
    the processor's inputs (tokens and pixels together)."""

    ids: list[int]
    text: str
    inputs: Any = None


class _Detokenizer:
    """Text of a growing token list, decoding only the newest tokens (and a few before them,
    for context): decoding the whole list at every step would cost O(n^2) over a long answer."""

    def __init__(self, tokenizer: Any, skip: set[int], keep: dict[int, str] | None = None):
        """`skip`: tokens left out of the text (EOS); `keep`: special tokens written out as the
        text given, which decoding would drop."""
        # Most requests keep nothing: their every step decodes as it did before markers.
        self._decode: Callable[[list[int]], str] = (
            functools.partial(_decode_keeping, tokenizer.decode, keep)
            if keep
            else functools.partial(tokenizer.decode, skip_special_tokens=True)
        )
        self._skip = skip
        self._tokens: list[int] = []  # the text's tokens (EOS left out)
        self._seen = 0  # generated tokens looked at so far
        self._prefix = 0  # where the decoded window starts
        self._read = 0  # how far text has been given out

    def add(self, generated: list[int], final: bool = False) -> str:
        """The text the tokens generated since the last call add. Half of a multi-byte
        character is held back for its rest; `final` (no more tokens come) gives out what was
        held back, less a character the last token cut in half (max_tokens ended it there):
        held back, a whole answer so cut lost every word of its text."""
        self._tokens.extend(t for t in generated[self._seen :] if t not in self._skip)
        self._seen = len(generated)
        before = self._decode(self._tokens[self._prefix : self._read])
        after = self._decode(self._tokens[self._prefix :])
        if final:
            after = after.rstrip("\ufffd")
        elif after.endswith("\ufffd"):
            return ""  # half of a multi-byte character: wait for the rest
        if len(after) <= len(before):
            return ""
        self._prefix, self._read = self._read, len(self._tokens)
        return str(after[len(before) :])


def _decode_keeping(decode: Callable[..., str], keep: dict[int, str], tokens: list[int]) -> str:
    """The text of `tokens`, special tokens left out but those in `keep`, written as given."""
    if keep.keys().isdisjoint(tokens):
        return decode(tokens, skip_special_tokens=True)
    pieces, start = [], 0
    for at, token in enumerate(tokens):
        if token in keep:
            pieces += [decode(tokens[start:at], skip_special_tokens=True), keep[token]]
            start = at + 1
    pieces.append(decode(tokens[start:], skip_special_tokens=True))
    return "".join(pieces)


def _token_ids(tokenizer: Any, names: Iterable[str]) -> dict[int, str]:
    """The tokens among `names` that `tokenizer` has whole, by id."""
    found = {}
    for name in names:
        token = tokenizer.convert_tokens_to_ids(name)
        if isinstance(token, int) and tokenizer.convert_ids_to_tokens(token) == name:
            found[token] = name
    return found


class _Step:
    """A piece of one sequence's text, and where the sequence stands."""

    __slots__ = (
        "completion_tokens",
        "finish_reason",
        "logprobs",
        "prompt_tokens",
        "text",
        "tokens",
    )

    def __init__(
        self,
        text: str,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        logprobs: list[float],
        tokens: list[int],
    ):
        self.text = text
        self.finish_reason = finish_reason
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.logprobs = logprobs
        self.tokens = tokens


class _Shape:
    """OpenAI's chat.completion / text_completion objects and their chunks."""

    def __init__(self, model: str, chat: bool, stream: bool, logprobs: bool):
        self.model = model
        self.chat = chat
        self.logprobs = logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = ("chat.completion" if chat else "text_completion") + (
            ".chunk" if stream and chat else ""
        )
        self.prompt_tokens = 0
        self.completion_tokens: dict[int, int] = {}

    def _envelope(self, choices: list[Json]) -> Json:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _usage(self) -> Json:
        completion = sum(self.completion_tokens.values())
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def chunk(self, index: int, step: _Step, first: bool) -> Json:
        self.prompt_tokens = step.prompt_tokens
        self.completion_tokens[index] = step.completion_tokens
        choice: Json = {"index": index, "finish_reason": step.finish_reason}
        if self.chat:
            delta: Json = {"content": step.text}
            if first:
                delta["role"] = "assistant"
            choice["delta"] = delta
        else:
            choice["text"] = step.text
        if self.logprobs:
            choice["logprobs"] = None  # per-token logprobs come with the whole answer
        return self._envelope([choice])

    def usage_chunk(self) -> Json:
        body = self._envelope([])
        body["usage"] = self._usage()
        return body

    def whole(self, finals: list[tuple[str, _Step]]) -> Json:
        choices = []
        for index, (text, last) in enumerate(finals):
            self.prompt_tokens = last.prompt_tokens
            self.completion_tokens[index] = last.completion_tokens
            choice: Json = {"index": index, "finish_reason": last.finish_reason}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice["logprobs"] = (
                {
                    "content": [
                        {"token_id": t, "logprob": lp}
                        for t, lp in zip(last.tokens, last.logprobs, strict=False)
                    ]
                }
                if self.logprobs
                else None
            )
            choices.append(choice)
        body = self._envelope(choices)
        body["usage"] = self._usage()
        return body


async def _merge(
    streams: list[AsyncGenerator[_Step, None]], shape: _Shape
) -> AsyncGenerator[Json, None]:
    """Chunks of n sequences as they come, each tagged with its choice index."""
    queue: asyncio.Queue[tuple[int, _Step | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, steps: AsyncGenerator[_Step, None]) -> None:
        try:
            async for step in steps:
                await queue.put((index, step))
        except BaseException as exc:
            await queue.put((index, exc))
            raise
        await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    started: set[int] = set()
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            yield shape.chunk(index, item, index not in started)
            started.add(index)
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            await stream.aclose()


async def _last(steps: AsyncGenerator[_Step, None]) -> tuple[str, _Step]:
    """The whole text of one sequence and its final step."""
    text, last = "", None
    try:
        async for step in steps:
            text += step.text
            last = step
    finally:
        await steps.aclose()  # cancelled: stop the sequence
    assert last is not None
    return text, last


async def _whole(answers: AsyncIterator[Json]) -> Json:
    async for answer in answers:
        return answer
    raise RuntimeError("no answer")


def _first_stop(text: str, stops: list[str], sent: int) -> int | None:
    """Where the earliest stop string starts, if one has appeared in the text not yet sent."""
    found = [
        at for stop in stops if stop and (at := text.find(stop, max(0, sent - len(stop) + 1))) != -1
    ]
    return min(found) if found else None


def _partial_stop(text: str, stops: list[str]) -> bool:
    """Whether the text ends with the beginning of a stop string."""
    return any(text.endswith(stop[:i]) for stop in stops for i in range(1, len(stop)))
