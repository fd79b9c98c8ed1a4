"""An encoder's forward passes replayed as CUDA graphs, one graph per padded shape.

Eager PyTorch launches every kernel of every layer from Python: on the H200 host measured, a
pass of 16 short texts through a 6-layer MiniLM costs milliseconds of the model thread's time
while the GPU works for a fraction of one, so 32 clients sending one text each got a quarter of
the rate sentence-transformers reaches with 64 texts a call. A CUDA graph replays a whole pass
with one call.

A graph has fixed shapes, so a pass is padded up to a bucket of rows and tokens: the extra
token columns are masked out (attention mask 0) and the extra rows repeat the first row and are
dropped, so the real rows' results are those of the unpadded pass. A bucket's graph is captured
the first time a pass needs it and kept unless it replayed clearly slower than the eager pass
of as many rows would (`CLEAR_LOSS`), both timed then: for long texts on a large model the GPU's
arithmetic is the limit, and padding would cost more than the launches it saves. A model whose
pass reads its inputs on the host (a synchronisation, which capture refuses) stays eager.

A graph also holds its copies in and out, from and to pinned host buffers that NumPy fills and
reads: a pass then calls into torch twice (replay, synchronize), not ~15 times. Each call gives
up the interpreter lock and waits up to a switch interval to get it back while the model
process's event loop parses requests; on the H200 that made a MiniLM-sized pass cost 6.0 ms
beside a busy thread against 1.8 ms this way (`benchmarks/gpu/graph_io_probe.py`).

Graphs come in sets, one per pass that may be in flight at once (`batching.IN_FLIGHT`): each
set replays on a stream of its own from a memory pool of its own, and its graphs share that
pool because a set's passes run one after another. A shape's graphs in every set are captured
when it is first seen, and timed once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from inferd.engines.batching import IN_FLIGHT, Running

log = logging.getLogger(__name__)

# Rows a padded pass holds: a pass of n rows takes the first that fits.
ROWS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
# Tokens a padded pass holds at most; longer passes run eagerly.
MAX_TOKENS = 512
# Where the GPU's arithmetic outlasts launching the kernels a graph saves little and padding
# costs more, and trying it stalls the model's queue for about ten passes of that shape. Where
# that starts depends on the GPU and the weights' precision (H200: bge-large, 335M parameters,
# lost from 8 x 256 tokens in float32; in float16 it won 5x at 32 x 16 and 1 x 320), so it is
# learned: once a graph clearly loses, passes of as much work (parameters x padded tokens) or
# more are not tried. MAX_WORK bounds the first tries (about 4 TFLOP: bge-large 16 x 384).
MAX_WORK = 2e12
# A graph this much slower than the eager pass loses; nearer, it is kept. Where the GPU's
# arithmetic is the limit the two time alike and a tie falls either way, and a graphed pass
# can run beside another where an eager one cannot (H200, bge-large: 8 x 16 tokens timed 7.79 ms
# eager and 7.93 graphed, and taken for a loss it kept every larger pass eager, 16 x 16 among
# them: 8.2 ms graphed against 8.9-15.9 eager; one API process then ran no pass beside another,
# 1,129 texts/s at 32 clients against 1,616-1,648 in the runs where no tie fell that way).
CLEAR_LOSS = 1.1


def bucket(rows: int, tokens: int) -> tuple[int, int] | None:
    """The padded shape a pass of `rows` x `tokens` runs at, or None when none is kept (more
    rows or tokens than any graph holds). Tokens round up to 16 to 128, then to 64, so long
    inputs pad by at most a few percent."""
    fits = [r for r in ROWS if r >= rows]
    if not fits or tokens > MAX_TOKENS:
        return None
    step = 16 if tokens <= 128 else 64
    return fits[0], -(-tokens // step) * step


def padded(features: dict[str, Any], shape: tuple[int, int], pad_id: int) -> dict[str, Any] | None:
    """`features` (a tokenizer's right-padded rows x tokens tensors) padded to `shape`: new token
    columns hold `pad_id` in `input_ids` and 0 elsewhere (so the attention mask hides them), new
    rows repeat the first row. None when a tensor is not one of rows x tokens, whose padding this
    cannot know."""
    rows, tokens = features["attention_mask"].shape
    out: dict[str, Any] = {}
    for key, value in features.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
            continue
        if tuple(value.shape) != (rows, tokens):
            return None
        grown = value.new_full(shape, _pad_value(key, pad_id))
        grown[:rows, :tokens] = value
        grown[rows:] = grown[0]
        out[key] = grown
    return out


def _pad_value(name: str, pad_id: int) -> int:
    """What an input's padding columns hold: the pad token in the ids, 0 (hidden) elsewhere."""
    return pad_id if name == "input_ids" else 0


def fill_padded(hosts: dict[str, np.ndarray], features: dict[str, Any], pad_id: int) -> None:
    """Write `features` (rows x tokens tensors on the CPU) into `hosts` (arrays of a graph's
    padded shape) as `padded` pads them: new columns hold the input's fill, new rows repeat
    the first; NumPy throughout, which keeps the interpreter lock."""
    rows, tokens = features["attention_mask"].shape
    for name, host in hosts.items():
        host[:rows, :tokens] = features[name].numpy()
        host[:rows, tokens:] = _pad_value(name, pad_id)
        host[rows:] = host[0]


@dataclass
class _Set:
    """The graphs of one pass in flight: their stream, their memory pool, and whether a pass
    launched on them is not collected yet."""

    stream: torch.cuda.Stream
    pool: Any
    busy: bool = False


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hosts: dict[str, np.ndarray]  # the pinned inputs the graph copies from, as NumPy sees them
    pad_id: int
    output: np.ndarray  # the pinned float32 output the graph copies into
    set: _Set
    # The device copies of the inputs the graph reads: made outside the capture, so not in the
    # set's pool, and freed for other tensors (another set's graph, an eager pass) unless kept.
    inputs: dict[str, torch.Tensor]

    def launch(self, features: dict[str, Any], seconds: float) -> Running[np.ndarray]:
        """Starts the pass of `features` (a tokenizer's rows x tokens tensors on the CPU),
        padded into the graph's shape as `padded` pads, expected to take `seconds`; the
        returned call waits for the real rows' output. The graph's set is busy until then: the
        next pass on it refills its buffers."""
        rows = features["attention_mask"].shape[0]
        fill_padded(self.hosts, features, self.pad_id)
        started = time.perf_counter()
        with torch.cuda.stream(self.set.stream):
            self.graph.replay()
        self.set.busy = True

        def collect() -> np.ndarray:
            try:
                self.set.stream.synchronize()
                return self.output[:rows].copy()
            finally:
                self.set.busy = False

        return Running(collect, started + seconds)

    def device_seconds(self, times: int = 3) -> float:
        """The shortest of `times` replays as the GPU timed them, from the replay's start to
        its last copy out: when a launched pass should be done. (A host's clock around the
        call would count filling the buffers and waking from the wait as well: a pass of a
        MiniLM-sized model takes about as long to launch as to run.)"""
        best = float("inf")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(times):
            with torch.cuda.stream(self.set.stream):
                start.record()
                self.graph.replay()
                end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        return best


class GraphedPasses:
    """Calls `module(features)[output]` for a tokenizer's features, through a CUDA graph of the
    padded shape where one is kept, eagerly otherwise; returns the real rows' outputs on the
    host, as float32.

    Not thread-safe: one thread (the engine's model thread) makes every call. Up to `sets`
    graphed passes may be in flight at once, each on a set of graphs of its own (`launch`)."""

    def __init__(
        self,
        module: torch.nn.Module,
        output: str,
        pad_id: int,
        device: torch.device,
        sets: int = IN_FLIGHT,
    ) -> None:
        self._module = module
        self._params = sum(p.numel() for p in module.parameters())
        self._output = output
        self._pad_id = pad_id
        self._device = device
        with torch.cuda.device(device):
            self._sets = [
                _Set(torch.cuda.Stream(), torch.cuda.graph_pool_handle()) for _ in range(sets)
            ]
        # How long a shape's graphed pass takes on the GPU (seconds), or None where it runs
        # eagerly.
        self._kept: dict[Hashable, float | None] = {}
        self._graphs: dict[tuple[Hashable, int], _Graph] = {}  # by shape and set
        self._losing_work = MAX_WORK  # the least work a graph lost at: not tried from there

    @property
    def graphs(self) -> int:
        """Shapes whose passes are graphed so far."""
        return sum(seconds is not None for seconds in self._kept.values())

    def __call__(self, features: dict[str, Any]) -> np.ndarray:
        return self.launch(features)()

    def launch(self, features: dict[str, Any]) -> Callable[[], np.ndarray]:
        """Starts the pass of `features` on the GPU; the returned call waits for its output
        (`Running` where a graph runs it: a set of graphs is this pass's until collected, and
        another graphed pass may be launched meanwhile while a set is free)."""
        # Inference mode throughout: the graphs' input buffers are made and refilled in it.
        with torch.cuda.device(self._device), torch.inference_mode():
            return self._launch(features)

    def _launch(self, features: dict[str, Any]) -> Callable[[], np.ndarray]:
        shape = bucket(*features["attention_mask"].shape)
        if shape is None:
            return self._eager_launch(features)
        # The features' constants (sentence-transformers' `modality`) are part of what a
        # graph recorded.
        key = (
            shape,
            *sorted((k, None if isinstance(v, torch.Tensor) else v) for k, v in features.items()),
        )
        try:
            hash(key)
        except TypeError:
            return self._eager_launch(features)
        if key not in self._kept:
            if self._params * shape[0] * shape[1] >= self._losing_work:
                return self._eager_launch(features)
            self._kept[key] = self._decided(features, shape, key, self._free_set())
        seconds = self._kept[key]
        if seconds is None:
            return self._eager_launch(features)
        graph = self._graphs.get((key, self._free_set()))
        if graph is None:  # captured in another set but not in this one: a broken model
            return self._eager_launch(features)
        return graph.launch(features, seconds)

    def _free_set(self) -> int:
        for index, graphs in enumerate(self._sets):
            if not graphs.busy:
                return index
        raise RuntimeError(
            f"{len(self._sets)} graphed passes are in flight already: collect one first"
        )

    def _eager_launch(self, features: dict[str, Any]) -> Callable[[], np.ndarray]:
        on_device = {
            k: v.to(self._device) if isinstance(v, torch.Tensor) else v for k, v in features.items()
        }
        output = self._module(on_device)[self._output].float()
        return lambda: output.cpu().numpy()

    def _eager(self, features: dict[str, Any]) -> np.ndarray:
        return self._eager_launch(features)()

    def _decided(
        self, features: dict[str, Any], shape: tuple[int, int], key: Hashable, index: int
    ) -> float | None:
        """How long the padded shape's pass takes on the GPU (`_Graph.device_seconds`), its
        graph timed in set `index` and captured in every set; None where the graph clearly loses
        to the eager pass of as many rows (`CLEAR_LOSS`: then no pass of as much work or more is
        tried again) or it cannot be graphed (see `_captured`)."""
        # The eager pass of as many rows as the graph's: the first pass of a shape holds as
        # many as happened to wait, and timed on those the choice was a toss (H200, bge-large:
        # 24 x 16 timed 9.04 ms eager on a first pass of fewer rows, 11.43 graphed, and on that
        # server every pass of 24 rows or more then ran eagerly, each launch holding the model
        # thread 2-3 ms; 10.6-12.6 eager on the other 11 servers). Its tokens stay the texts'
        # own: padding them is what a graph of long texts costs for real.
        rows_only = padded(features, (shape[0], features["attention_mask"].shape[1]), self._pad_id)
        eager_s = _fastest(lambda: self._eager(rows_only if rows_only is not None else features))
        graph = self._captured(features, shape, self._sets[index])
        if graph is None:
            return None
        graph_s = _fastest(lambda: graph.launch(features, 0.0)())
        loses = graph_s > eager_s * CLEAR_LOSS
        log.info(
            "passes of shape %s: eager %.2f ms, graph %.2f ms%s",
            shape,
            eager_s * 1e3,
            graph_s * 1e3,
            " (eager kept)" if loses else "",
        )
        if loses:
            self._losing_work = min(self._losing_work, self._params * shape[0] * shape[1])
            return None
        self._graphs[(key, index)] = graph
        for other, into in enumerate(self._sets):
            # Now rather than when two passes of the shape first overlap: a capture stalls the
            # model's queue (H200, bge-large, 200-word texts, two-second loads: captured at a
            # shape's first overlap, 182 texts/s against 273 before; now 244 against 233).
            if other != index and (also := self._captured(features, shape, into)) is not None:
                self._graphs[(key, other)] = also
        return graph.device_seconds()

    def _captured(
        self, features: dict[str, Any], shape: tuple[int, int], into: _Set
    ) -> _Graph | None:
        """The padded shape's graph in set `into`, or None where the features cannot be padded
        or capture failed (the model synchronises with the host inside its pass)."""
        grown = padded(features, shape, self._pad_id)
        if grown is None:
            return None
        tensors = {k: v for k, v in grown.items() if isinstance(v, torch.Tensor)}
        hosts = {k: v.pin_memory() for k, v in tensors.items()}
        inputs = {k: v.to(self._device) for k, v in tensors.items()}
        constants = {k: v for k, v in grown.items() if not isinstance(v, torch.Tensor)}
        # Lazy initialisations (cuBLAS handles, kernel choices) happen outside the capture,
        # and give the output's shape for its pinned buffer.
        into.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(into.stream):
            shaped = self._module({**inputs, **constants})[self._output]
        torch.cuda.current_stream().wait_stream(into.stream)
        output = torch.empty(shaped.shape, dtype=torch.float32).pin_memory()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(
                graph, pool=into.pool, stream=into.stream, capture_error_mode="thread_local"
            ):
                for name, host in hosts.items():
                    inputs[name].copy_(host, non_blocking=True)
                result = self._module({**inputs, **constants})[self._output]
                output.copy_(result.float(), non_blocking=True)
        except Exception as error:  # the eager pass of these inputs worked: serve it that way
            torch.cuda.synchronize()  # a broken context raises here, and is not hidden
            log.info("passes of shape %s stay eager: capture failed (%s)", shape, error)
            return None
        hosted = {k: v.numpy() for k, v in hosts.items()}
        return _Graph(graph, hosted, self._pad_id, output.numpy(), into, inputs)


def _fastest(run: Callable[[], Any], times: int = 3) -> float:
    """The shortest of `times` timed runs, after one untimed (seconds, the GPU finished)."""
    run()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best
