"""A decode loop over a static KV cache, one CUDA graph a step: the transformers engine on GPUs.

Eager PyTorch pays the host's cost of launching each kernel of each layer at every token (about
45 ms a step for a 0.5B Llama on the H200 host measured), which no batching hides. transformers'
own cure, `generate(cache_implementation="static")`, keeps the KV cache at a fixed shape and
compiles the decode step with torch.compile into CUDA graphs, so a step is one graph launch; but
that `generate` is one batch that starts and ends together, while a server's requests come and
go. This loop keeps transformers' StaticCache of `rows` x `slots` and lets requests join and
leave between steps:

- Every row writes its next key/value at the same slot, the loop's clock, so one graph serves
  any mix of rows. A row's own tokens are the slots from its start to the clock (a 4-D mask of
  the rows' spans), and its own positions go to the rotary embedding, so slot and position
  differ freely.
- New requests' prompts are prefilled eagerly, several together (right-padded), and their keys
  and values are copied into their rows so that they end at the clock (which moves on first if a
  prompt is longer than it, the running rows' spans moved with it).
- When the clock reaches the last slot, the rows' spans are shifted left to the oldest start
  still in use (compaction), which frees what finished requests held. A row holds only the
  tokens it has, so a request without max_tokens reserves nothing and never holds others back.
- A step attends over the cache's first `window` slots only, the smallest of a few sizes (each
  its own graph) that holds the clock; compaction keeps the clock low. Attending over every slot
  would cost each step a read of the whole cache (and with grouped-query attention under a mask,
  transformers' copy of it to every query head).
- The grammar masks (llguidance's) and the greedy choice run inside the same graph; one copy in
  and one out cross the bus each step. Rows that sample (temperature, top-k, top-p) are drawn
  after it, eagerly, from the scores it leaves.

Models whose cache is not plain full attention (sliding windows, hybrids) stay on the paged
decoder. Without CUDA the same loop runs eagerly (what the CPU tests exercise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import torch

from inferd.engines.decoding import Deliver, Output, Request
from inferd.engines.grammar import allowed, bit_positions

log = logging.getLogger(__name__)

# Padded prompt tokens prefilled in one forward pass at most (more wait for the next one).
_PREFILL_TOKENS = 8192


def windows(slots: int) -> list[int]:
    """The attention windows a cache of `slots` is decoded with (one compiled graph each):
    a sixteenth, a quarter and all of it (4096 slots: 256, 1024, 4096)."""
    return sorted({w for w in (slots // 16, slots // 4) if w >= 32} | {slots})


def supported(model: Any) -> str | None:
    """Why this model cannot run on the static decoder, or None if it can."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    config = model.config.get_text_config(decoder=True)
    layers = StaticCache(config=config, max_cache_len=8).layers
    if not layers or any(type(layer) is not StaticLayer for layer in layers):
        return f"its {config.model_type} cache is not full attention in every layer"
    if model.config._attn_implementation not in ("sdpa", "eager"):
        return f"it attends with {model.config._attn_implementation}, which takes no 4-D mask"
    return None


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token takes in every layer."""
    config = model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * model.dtype.itemsize


def _window_layer() -> type:
    from transformers.cache_utils import StaticLayer

    class WindowLayer(StaticLayer):
        """transformers' static layer, whose attention sees only its first `window` slots."""

        window = 0

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            return keys[:, :, : self.window], values[:, :, : self.window]

    return WindowLayer


class _Request:
    __slots__ = (
        "deliver",
        "eos",
        "id",
        "logprobs",
        "loop",
        "max_new",
        "prompt",
        "row",
        "sampling",
        "streaming",
        "tokens",
    )

    def __init__(self, request: Request, deliver: Deliver, loop: asyncio.AbstractEventLoop):
        self.id = request.id
        self.prompt = request.prompt
        self.max_new = request.max_new_tokens
        self.sampling = request.sampling
        self.eos = frozenset(request.eos)
        self.streaming = request.streaming
        self.deliver = deliver
        self.loop = loop
        self.row = -1
        self.tokens: list[int] = []
        self.logprobs: list[float] = []


class StaticDecoder:
    """Requests decoded together over a StaticCache of `rows` sequences of `slots` tokens."""

    def __init__(self, model: Any, rows: int, slots: int, grammar: Any, compile: bool):
        self._model = model
        self._rows, self._slots = rows, slots
        self._grammar = grammar
        self._compile = compile
        self._device = model.device
        self._vocab = int(model.get_output_embeddings().weight.shape[0])
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request | None] = [None] * rows
        self._by_id: dict[str, _Request] = {}
        self._clock = 0  # the slot the next step writes (each layer's counter holds it too)
        self._starts = [0] * rows  # where each row's span begins
        self._steps, self._step_seconds, self._loop_seconds = 0, 0.0, 0.0
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="static-decode", daemon=True)

    # from the engine ---------------------------------------------------------------------

    def start(self) -> None:
        """Build the cache and the compiled step (minutes on a cold compile), then decode."""
        self._thread.start()
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def submit(self, request: Request, deliver: Deliver) -> None:
        if len(request.prompt) + request.max_new_tokens > self._slots:
            raise ValueError(
                f"{len(request.prompt)} + {request.max_new_tokens} tokens exceed {self._slots}"
            )
        self._inbox.put(("add", _Request(request, deliver, asyncio.get_running_loop())))

    def cancel(self, request_id: str) -> None:
        self._inbox.put(("cancel", request_id))

    def forget(self, request_id: str) -> None:
        pass  # a finished request left nothing behind

    def stop(self) -> None:
        self._inbox.put(("stop", None))
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)  # not torn down mid-step at interpreter exit

    # the loop's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                self._build()
            except BaseException as exc:  # the launch reports it
                self._failed = exc
                return
            finally:
                self._ready.set()
            while self._take(block=not self._by_id):
                started = time.perf_counter()
                self._admit()
                if any(self._active):
                    self._decode()
                self._loop_seconds += time.perf_counter() - started

    def timings(self) -> tuple[int, float, float]:
        """Decode steps since the last call, the seconds their graphs took (sampling and
        copies included), and the seconds the loop was busy; for benchmarks."""
        taken = self._steps, self._step_seconds, self._loop_seconds
        self._steps, self._step_seconds, self._loop_seconds = 0, 0.0, 0.0
        return taken

    def _build(self) -> None:
        from transformers import Cache

        rows, slots, device = self._rows, self._slots, self._device
        config = self._model.config.get_text_config(decoder=True)
        layer = _window_layer()
        self._layers: list[Any] = [
            layer(max_cache_len=slots) for _ in range(config.num_hidden_layers)
        ]
        self._cache = Cache(layers=self._layers)
        self._windows = windows(slots)
        self._set_window(slots)
        # Pinned host buffers and their device twins: next tokens and positions, each row's
        # sampling and span, and the grammar's bitmasks.
        self._io = torch.zeros((2, rows), dtype=torch.long, pin_memory=device.type == "cuda")
        self._io_dev = torch.zeros((2, rows), dtype=torch.long, device=device)
        # Written element by element each step: numpy's indexing costs ~0.5 us, torch's ~5 us.
        self._io_host = self._io.numpy()
        self._params = torch.zeros((5, rows), dtype=torch.float32)
        self._params[2:4] = 1.0  # temperature and top_p of empty rows
        self._params[4] = 1
        self._params_dev = self._params.to(device)
        self._params_dirty = False
        self._word_count = (self._vocab + 31) // 32
        self._words_dev = torch.full((rows, self._word_count), -1, dtype=torch.int32, device=device)
        self._words_dirty = False
        self._slot_index = torch.arange(slots, device=device)
        self._ranks = torch.arange(self._vocab, device=device)
        self._word_of, self._bit_of = bit_positions(self._vocab, device)
        self._bool_mask = self._model.config._attn_implementation == "sdpa"
        # One eager step allocates the cache's tensors (and marks their addresses static for
        # the graphs); compiling then records the step.
        self._step = self._step_eager
        self._graph_step()
        if self._compile:
            self._capture()
        self._set_clock(0)

    def _capture(self) -> None:
        """Compile the step (inductor, one graph per window), then record each compiled step
        in a CUDA graph of its own, replayed with one call a step. torch.compile's own CUDA
        graphs ("reduce-overhead") cost more host time a step, and serve only the thread that
        first used them."""
        compiled = torch.compile(self._step_eager, fullgraph=True, dynamic=False)
        pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, tuple[Any, Any]] = {}
        inputs = (self._io_dev, self._params_dev, self._words_dev)
        for window in reversed(self._windows):  # the largest first: the rest fit in its pool
            self._set_window(window)
            for _ in range(2):
                self._set_clock(0)
                compiled(*inputs)
            torch.cuda.synchronize()
            self._set_clock(0)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = compiled(*inputs)
            self._graphs[window] = (graph, outputs)
        self._step = self._replay

    def _replay(
        self, io: torch.Tensor, params: torch.Tensor, words: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        graph, outputs = self._graphs[self._window]
        graph.replay()
        return outputs

    def _graph_step(self) -> list[list[float]]:
        self._io_dev.copy_(self._io, non_blocking=True)
        if self._params_dirty:
            self._params_dev.copy_(self._params, non_blocking=True)
            self._params_dirty = False
        greedy, scaled, logprobs = self._step(self._io_dev, self._params_dev, self._words_dev)
        if any(r is not None and r.sampling.top_k != 1 for r in self._active):
            # Outside the graph: inductor cannot compile a cumulative sum as wide as the
            # vocabulary (torch 2.11), which top-p needs.
            return self._draw(scaled, logprobs, self._params_dev).tolist()
        return greedy.tolist()

    def _step_eager(
        self, io: torch.Tensor, params: torch.Tensor, words: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decode step of every row (what torch.compile records): the greedy choices
        [token, logprob] by row, and the scores and log-probabilities to sample from."""
        rows = self._rows
        clock = self._layers[0].cumulative_length
        active = params[0] > 0
        # An empty row attends to its own slot only, so no row is all masked (NaN).
        low = torch.where(active, params[1].long(), clock)
        slot = self._slot_index[: self._window]
        spans = (slot[None, :] >= low[:, None]) & (slot[None, :] <= clock)
        mask = spans[:, None, None, :]
        if not self._bool_mask:  # eager attention adds its mask
            mask = torch.zeros(mask.shape, dtype=self._model.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self._model.dtype).min
            )
        logits = self._model(
            input_ids=io[0].view(rows, 1),
            position_ids=io[1].view(rows, 1),
            attention_mask=mask,
            past_key_values=self._cache,
            use_cache=True,
        ).logits[:, -1]
        scaled, logprobs = self._scores(logits.float(), params, words)
        return self._greedy(scaled, logprobs), scaled, logprobs

    def _pick(
        self, logits: torch.Tensor, params: torch.Tensor, words: torch.Tensor
    ) -> torch.Tensor:
        """Each row's next token and its log-probability, [token, logprob] by row."""
        scaled, logprobs = self._scores(logits, params, words)
        return self._draw(scaled, logprobs, params)

    def _scores(
        self, logits: torch.Tensor, params: torch.Tensor, words: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits under each row's grammar and temperature, and the model's own
        log-probabilities."""
        permitted = allowed(words, self._word_of, self._bit_of)
        scaled = logits.masked_fill(~permitted, -torch.inf) / params[2][:, None]
        return scaled, logits.log_softmax(-1)

    @staticmethod
    def _greedy(scaled: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        tokens = scaled.argmax(-1, keepdim=True)
        return torch.cat([tokens.float(), logprobs.gather(1, tokens)], 1).T

    def _draw(
        self, scaled: torch.Tensor, logprobs: torch.Tensor, params: torch.Tensor
    ) -> torch.Tensor:
        """Each row's draw under its top-k and top-p (by sorting, then the Gumbel-max trick
        in place of a multinomial draw); top-k 1 is the greedy choice."""
        values, order = scaled.sort(-1, descending=True)
        probs = values.softmax(-1)
        before = probs.cumsum(-1) - probs  # the mass of the likelier tokens
        dropped = (self._ranks[None, :] >= params[4].long()[:, None]) | (
            before > params[3][:, None]
        )
        noise = torch.rand_like(values).clamp_(1e-20, 0.9999999).log_().neg_().log_().neg_()
        choice = (values.masked_fill(dropped, -torch.inf) + noise).argmax(-1, keepdim=True)
        tokens = order.gather(1, choice)
        return torch.cat([tokens.float(), logprobs.gather(1, tokens)], 1).T

    def _set_clock(self, clock: int) -> None:
        self._clock = clock
        for layer in self._layers:
            layer.cumulative_length.fill_(clock)

    def _set_window(self, window: int) -> None:
        self._window = window
        for layer in self._layers:
            layer.window = window

    def _take(self, block: bool) -> bool:
        """Take what the engine sent; False once asked to stop."""
        while True:
            try:
                kind, item = self._inbox.get(block=block)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                self._fail_all("the model is shutting down")
                return False
            if kind == "add":
                self._by_id[item.id] = item
                self._waiting.append(item)
            elif (request := self._by_id.pop(item, None)) is not None:
                if request.row >= 0:
                    self._free(request)
                else:
                    self._waiting.remove(request)

    # admission ------------------------------------------------------------------------------

    def _admit(self) -> None:
        free = [r for r, request in enumerate(self._active) if request is None]
        if not self._waiting or not free:
            return
        if len(free) == self._rows:
            self._compact()  # nothing runs: back to the first slot
        group: list[_Request] = []
        longest = 0
        for request in self._waiting:
            if len(group) == len(free):
                break
            length = max(longest, len(request.prompt))
            if (len(group) + 1) * length > _PREFILL_TOKENS and group:
                break
            if not self._fits(length):
                self._compact()
                if not self._fits(length):
                    break
            group.append(request)
            longest = length
        if not group:
            return
        for _ in group:
            self._waiting.popleft()
        try:
            self._prefill(group, free[: len(group)], longest)
        except Exception as exc:
            log.exception("prefill failed")
            for request in group:
                self._by_id.pop(request.id, None)
                if request.row >= 0:
                    self._free(request)
                self._send(request, Output(request.tokens, True, request.logprobs, str(exc)))

    def _fits(self, longest: int) -> bool:
        """Whether a prompt of `longest` tokens can end at the clock (moved on to it) and
        still leave the slot the next step writes."""
        return max(self._clock, longest) < self._slots

    def _compact(self) -> None:
        """Shift every row's span left by the earliest start in use, freeing the slots before
        it (the positions the rows' keys were computed at go with them)."""
        starts = [self._starts[r] for r, request in enumerate(self._active) if request is not None]
        shift = min(starts, default=self._clock)
        if shift == 0:
            return
        if starts:
            used = self._clock - shift
            for layer in self._layers:
                for tensor in (layer.keys, layer.values):
                    tensor[:, :, :used].copy_(tensor[:, :, shift : self._clock].clone())
            for r in range(self._rows):
                self._starts[r] = max(0, self._starts[r] - shift)
            self._params[1] = torch.tensor(self._starts, dtype=torch.float32)
            self._params_dirty = True
        self._set_clock(self._clock - shift)

    def _move_to(self, clock: int) -> None:
        """Move the clock on to `clock`, the running rows' spans with it: slots skipped between
        a span and the clock would be read as part of it."""
        gap = clock - self._clock
        starts = [self._starts[r] for r, request in enumerate(self._active) if request is not None]
        if gap and starts:
            low = min(starts)
            for layer in self._layers:
                for tensor in (layer.keys, layer.values):
                    tensor[:, :, low + gap : clock].copy_(tensor[:, :, low : self._clock].clone())
            for r, request in enumerate(self._active):
                if request is not None:
                    self._starts[r] += gap
                    self._params[1, r] = self._starts[r]
            self._params_dirty = True
        self._set_clock(clock)

    def _prefill(self, group: list[_Request], rows: list[int], longest: int) -> None:
        """The group's prompts in one eager forward pass (right-padded), their keys and values
        copied into their rows to end at the clock, and each one's first token."""
        from transformers import DynamicCache

        device, count = self._device, len(group)
        lengths = torch.tensor([len(r.prompt) for r in group], device=device)
        ids = torch.zeros((count, longest), dtype=torch.long)
        mask = torch.zeros((count, longest), dtype=torch.long)
        for i, request in enumerate(group):
            ids[i, : len(request.prompt)] = torch.tensor(request.prompt)
            mask[i, : len(request.prompt)] = 1
        cache: Any = DynamicCache(config=self._model.config)
        last = lengths - 1
        keep = torch.unique(last)
        logits = self._model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=keep,
        ).logits
        logits = logits[torch.arange(count, device=device), torch.searchsorted(keep, last)]

        clock = max(self._clock, longest)
        self._move_to(clock)
        # Row i's prompt moves right by its padding, so that every prompt ends at the clock.
        source = (
            torch.arange(longest, device=device)[None, :] - (longest - lengths)[:, None]
        ).clamp(min=0)
        row_index = torch.tensor(rows, device=device)
        for static, dynamic in zip(self._layers, cache.layers, strict=True):
            for target, computed in ((static.keys, dynamic.keys), (static.values, dynamic.values)):
                moved = computed.gather(2, source[:, None, :, None].expand_as(computed))
                target[row_index, :, clock - longest : clock] = moved

        for request, row in zip(group, rows, strict=True):
            request.row = row
            self._active[row] = request
            self._starts[row] = clock - len(request.prompt)
            sampling = request.sampling
            self._params[:, row] = torch.tensor(
                [1.0, self._starts[row], sampling.temperature, sampling.top_p, sampling.top_k]
            )
        self._params_dirty = True
        params = self._params[:, rows].to(device)
        words = self._masks(list(enumerate(group)), count)
        assert words is not None
        picked = self._pick(logits.float(), params, words.to(device)).tolist()
        outputs = [(request, int(picked[0][i]), picked[1][i]) for i, request in enumerate(group)]
        self._advance(outputs, positions=[len(r.prompt) for r in group])

    # decoding -------------------------------------------------------------------------------

    def _decode(self) -> None:
        if self._clock >= self._slots:
            # The oldest row started after the first slot: had it begun there, the whole cache
            # would be its prompt and answer, which cannot exceed a row, and it would have ended.
            self._compact()
        needed = self._window_for(self._clock)
        if needed > self._windows[0]:
            earliest = min(self._starts[r] for r, q in enumerate(self._active) if q is not None)
            if self._window_for(self._clock - earliest) < needed:
                self._compact()
                needed = self._window_for(self._clock)
        if needed != self._window:
            self._set_window(needed)
        running = [(r, request) for r, request in enumerate(self._active) if request is not None]
        constrained = self._masks(running, self._rows, only_constrained=True)
        if constrained is not None:
            self._words_dev.copy_(constrained, non_blocking=True)
            self._words_dirty = True
        elif self._words_dirty:
            self._words_dev.fill_(-1)
            self._words_dirty = False
        started = time.perf_counter()
        try:
            picked = self._graph_step()
        except Exception as exc:
            log.exception("decode step failed")
            self._fail_all(f"generation failed: {exc}")
            return
        self._clock += 1
        self._steps += 1
        self._step_seconds += time.perf_counter() - started
        self._advance([(request, int(picked[0][r]), picked[1][r]) for r, request in running])

    def _window_for(self, clock: int) -> int:
        """The smallest window that holds the slot at `clock`."""
        return next(w for w in self._windows if clock < w)

    def _masks(
        self, rows: list[tuple[int, _Request]], count: int, only_constrained: bool = False
    ) -> torch.Tensor | None:
        """llguidance's bitmasks for `rows` (index in the batch, request), after each
        constrained matcher takes its sequence's newest tokens; None if `only_constrained`
        and none is."""
        if self._grammar is None:
            if only_constrained:
                return None
            return torch.full((count, self._word_count), -1, dtype=torch.int32)
        pending = []
        for index, request in rows:
            sequence = self._grammar.sequence(request.id)
            if sequence is not None:
                pending.append((index, sequence, request.tokens[sequence.taken :]))
        if not pending and only_constrained:
            return None
        masks = self._grammar.new_masks(count)
        self._grammar.fill(masks, pending)
        return masks

    def _advance(
        self, picked: list[tuple[_Request, int, float]], positions: list[int] | None = None
    ) -> None:
        """Record each request's new token, end those it finishes, tell their readers."""
        io = self._io_host
        sends: dict[asyncio.AbstractEventLoop, list[tuple[Deliver, Output]]] = {}
        for i, (request, token, logprob) in enumerate(picked):
            request.tokens.append(token)
            request.logprobs.append(logprob)
            io[0, request.row] = token
            if positions is not None:
                io[1, request.row] = positions[i]
            else:
                io[1, request.row] += 1
            done = token in request.eos or len(request.tokens) >= request.max_new
            if done:
                self._by_id.pop(request.id, None)
                self._free(request)
            if done or request.streaming:
                output = Output(request.tokens, done, request.logprobs)
                sends.setdefault(request.loop, []).append((request.deliver, output))
        for loop, items in sends.items():
            _post(loop, items)

    def _free(self, request: _Request) -> None:
        if self._active[request.row] is request:
            self._active[request.row] = None
        self._params[0, request.row] = 0.0
        self._params_dirty = True
        request.row = -1

    def _send(self, request: _Request, output: Output) -> None:
        _post(request.loop, [(request.deliver, output)])

    def _fail_all(self, reason: str) -> None:
        for request in list(self._by_id.values()):
            self._send(request, Output(request.tokens, True, request.logprobs, reason))
            if request.row >= 0:
                self._free(request)
        self._by_id.clear()
        self._waiting.clear()


def _post(loop: asyncio.AbstractEventLoop, items: list[tuple[Deliver, Output]]) -> None:
    """Hand outputs to their readers on their event loop, one wake-up for them all."""

    def deliver_all() -> None:
        for deliver, output in items:
            deliver(output)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is reading
        loop.call_soon_threadsafe(deliver_all)
