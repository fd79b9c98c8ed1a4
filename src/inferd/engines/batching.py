"""Dynamic batching: concurrent requests to one model share a forward pass.

Nothing waits on a timer. The model thread takes whatever requests are waiting when it is ready
for a pass, up to `max_items` inputs (a request alone that finds the model idle runs at once),
and hands each request its own results back on its event loop.

The thread takes its own work rather than being handed it by the event loop: on a GPU a pass of
short texts is a millisecond, and a hand-over through the loop (woken, then waking the thread)
cost the model thread about as long again each pass, as the loop's thread was busy reading
requests. And a pass is split in three so the host's part of the next pass overlaps the device's
work on this one: `prepare` (tokenizing, on the host) runs while the previous pass is still on
the device; `launch` starts the device's work once the previous pass's results are collected
(the device's buffers are then free for the next); `collect` waits for it. The next pass is
prepared early only when it is full (a request of many inputs, or `max_items` waiting): a pass
taken early leaves out whatever arrives while the device works: on a GPU-bound model (H200,
bge-large, 32 clients of one short text each), passes always taken early held 10.6 texts and
made 1,100 texts/s, against 16 and 1,357 taken once the device was done.

A pass the device runs on its own (`Running`: a CUDA graph replayed on a stream of its own) may
have a second launched beside it, up to `IN_FLIGHT` at once: 32 clients of a GPU-bound model
settle into two alternating passes of 16, and a pass of 16 leaves the GPU a quarter idle (H200,
bge-large's shape: two such passes on two streams at once made 2,496 texts/s, one after the
other 1,995; `benchmarks/gpu/two_streams_probe.py`). While one runs, the thread waits for either
as many inputs as it holds (then they go beside it) or the time it is expected to finish (then
it is collected, and whatever waits goes in one pass): a pass beside a running one is never
smaller than it, so passes do not crumble into ones of a text or two.

A batch that fails is tried again request by request, so one bad input fails only its own
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Histogram

from inferd.errors import ModelUnavailable

Item = TypeVar("Item")
T = TypeVar("T")
U = TypeVar("U")
# The three stages of one pass: prepare(items) -> launch; launch() -> collect; collect() -> one
# result per item, in order.
Collect = Callable[[], Sequence[Any]]
Launch = Callable[[], Collect]
Prepare = Callable[[list[Any]], Launch]

# How late a timed wait ends (the kernel's timer slack and the wake-up; 74-101 µs at p50 on a
# 2-core machine): the model thread stops waiting for work that soon before a running pass should
# be done, and waits for the device instead, which notices at once (H200, MiniLM, one client:
# 9% under the version before two passes in flight without this, 2% over with it; two hosts).
_LATE = 1.5e-4

# Passes of one model on the device at once: each `Running` one holds a set of device buffers
# until collected (`GraphedPasses` keeps this many sets).
IN_FLIGHT = 2


@dataclass(frozen=True)
class Running(Generic[T]):
    """A launched pass the device runs while the host goes on, on device buffers of its own:
    another pass may be launched beside it. `wait` gives its results; `ready_at` is when it is
    expected to finish (`time.perf_counter()`), which bounds how long the model thread waits for
    work to launch beside it."""

    wait: Callable[[], T]
    ready_at: float

    def __call__(self) -> T:
        return self.wait()


def then(collect: Callable[[], T], finish: Callable[[T], U]) -> Callable[[], U]:
    """`collect` whose results go through `finish`; still `Running` where `collect` is."""
    if isinstance(collect, Running):
        running = collect
        return Running(lambda: finish(running.wait()), running.ready_at)
    return lambda: finish(collect())


# In the model process's own registry, which the server scrapes and labels with the model.
BATCH_ITEMS = Histogram(
    "inferd_engine_batch_items",
    "Inputs computed together in one forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BESIDE = Counter(
    "inferd_engine_passes_beside",
    "Forward passes launched while another of the model's was still on the device",
)
BUSY = Counter(
    "inferd_engine_busy_seconds",
    "Seconds with at least one of the model's forward passes launched and not yet collected "
    "(its rate is the share of the time the model computes)",
)


def at_once(run: Callable[[list[Any]], Sequence[Any]]) -> Prepare:
    """A pass with no stages to overlap: all of `run` where the device's work would start."""

    def prepare(items: list[Any]) -> Launch:
        def launch() -> Collect:
            results = run(items)
            return lambda: results

        return launch

    return prepare


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Lane:
    """One kind of pass (embedding texts, scoring pairs) and the requests waiting for one."""

    prepare: Prepare
    size: Callable[[Any], int]
    max_items: int
    waiting: deque[_Pending] = field(default_factory=deque)
    queued: int = 0  # inputs waiting


@dataclass(eq=False)
class _Batch:
    """Requests taken together: their inputs in passes of at most the lane's `max_items`."""

    lane: _Lane
    pendings: list[_Pending]
    items: list[Any]
    results: list[Any]
    left: int = 0  # passes not yet collected
    failed: bool = False


@dataclass
class _Pass:
    batch: _Batch
    taken: list[int]  # the batch's inputs this pass computes


class ModelThread:
    """The one thread that runs a model's passes, for every `DynamicBatcher` made on it: torch
    already spreads one pass over every core, and passes of one model never run side by side."""

    def __init__(self, name: str):
        self._name = name
        self._lanes: list[_Lane] = []
        self._next_lane = 0
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._want: int | None = 1  # the inputs a waiting model thread waits for (see _take)

    def lane(self, prepare: Prepare, size: Callable[[Any], int], max_items: int) -> _Lane:
        lane = _Lane(prepare, size, max_items)
        self._lanes.append(lane)
        return lane

    def put(self, lane: _Lane, pending: _Pending) -> None:
        with self._ready:
            if self._closed:
                raise ModelUnavailable("the model is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            lane.waiting.append(pending)
            lane.queued += len(pending.items)
            if lane.queued >= _enough(lane, self._want):  # else the thread would wake for naught
                self._ready.notify()

    def close(self) -> None:
        """Stops taking work; requests still waiting fail."""
        with self._ready:
            self._closed = True
            left = [pending for lane in self._lanes for pending in lane.waiting]
            for lane in self._lanes:
                lane.waiting.clear()
                lane.queued = 0
            self._ready.notify()
        _settle([(p, ModelUnavailable("the model is shutting down")) for p in left])

    def _run(self) -> None:
        todo: deque[_Pass] = deque()
        flights: deque[tuple[_Pass, Collect]] = deque()  # launched, oldest first
        busy_since = 0.0  # when the passes in flight began to be
        while True:
            if not todo:
                batch = self._take(*_wanted(flights))
                if batch is None and not flights:
                    return  # closed
                if batch is not None:
                    todo.extend(_passes(batch))
            following = todo.popleft() if todo else None
            launch: Launch | None = None
            if following is not None:
                # On the host while the device still runs the passes in flight.
                launch = self._stage(following, todo, functools.partial(_prepare, following))
            done: list[_Batch] = []
            if flights and (launch is None or not _room_beside(flights)):
                running, collect = flights.popleft()
                if self._stage(running, todo, functools.partial(_collected, running, collect)):
                    done.append(running.batch)
                if not flights:
                    BUSY.inc(time.perf_counter() - busy_since)
            if following is not None and launch is not None and not following.batch.failed:
                started = time.perf_counter()
                collect = self._stage(following, todo, launch)
                if collect is not None:
                    if flights:
                        BESIDE.inc()
                    else:
                        busy_since = started
                    flights.append((following, collect))
            for batch in done:  # after the next launch: the device is not kept waiting
                _settle(list(zip(batch.pendings, _split(batch), strict=True)))

    def _take(self, want: int | None, until: float | None) -> _Batch | None:
        """The next lane's waiting requests, up to its `max_items` inputs (one request at
        least), once a lane has `want` inputs waiting (None: a full pass's worth), waiting for
        them until `until` (None: for ever). None when the time is up, or once closed."""
        with self._ready:
            while True:
                if self._closed:
                    return None
                for turn in range(len(self._lanes)):
                    lane = self._lanes[(self._next_lane + turn) % len(self._lanes)]
                    if lane.queued < _enough(lane, want):
                        continue
                    taken = _taken(lane)
                    if taken:
                        self._next_lane = (self._next_lane + turn + 1) % len(self._lanes)
                        items = [item for pending in taken for item in pending.items]
                        return _Batch(lane, taken, items, [None] * len(items))
                left = None if until is None else until - time.perf_counter() - _LATE
                if left is not None and left <= 0:
                    return None
                self._want = want
                self._ready.wait(left)

    def _stage(self, step: _Pass, todo: deque[_Pass], call: Callable[[], Any]) -> Any:
        """`call`'s value, or None when it raised: then its batch has failed (see `_failed`).
        Every call an engine makes goes through here, so nothing it raises ends the thread."""
        try:
            return call()
        except Exception as exc:
            _failed(step.batch, exc, todo)
            return None


def _wanted(flights: deque[tuple[_Pass, Collect]]) -> tuple[int | None, float | None]:
    """What the model thread waits for before its next pass (`_take`'s arguments): with nothing
    in flight, any request, for as long as it takes; with room for a pass beside those running,
    as many inputs as the oldest holds, until it should be done; else a full pass already
    waiting (prepared while the device works), not waiting for one."""
    if not flights:
        return 1, None
    oldest, collect = flights[0]
    if _room_beside(flights):
        assert isinstance(collect, Running)
        return len(oldest.taken), collect.ready_at
    return None, time.perf_counter()


def _room_beside(flights: deque[tuple[_Pass, Collect]]) -> bool:
    """Whether another pass may be launched before the oldest in flight is collected."""
    return len(flights) < IN_FLIGHT and all(isinstance(c, Running) for _, c in flights)


def _enough(lane: _Lane, want: int | None) -> int:
    return lane.max_items if want is None else min(want, lane.max_items)


def _taken(lane: _Lane) -> list[_Pending]:
    taken: list[_Pending] = []
    count = 0
    while lane.waiting and count < lane.max_items:
        pending = lane.waiting.popleft()
        lane.queued -= len(pending.items)
        if pending.future.cancelled():  # the client left
            continue
        taken.append(pending)
        count += len(pending.items)
    return taken


def _passes(batch: _Batch) -> list[_Pass]:
    """The batch's inputs in passes of the lane's `max_items`, taken longest first: inputs of
    like length pad little (sentence-transformers' own order)."""
    size, cap = batch.lane.size, batch.lane.max_items
    order = sorted(range(len(batch.items)), key=lambda i: size(batch.items[i]), reverse=True)
    passes = [_Pass(batch, order[start : start + cap]) for start in range(0, len(order), cap)]
    batch.left = len(passes)
    return passes


def _prepare(step: _Pass) -> Launch:
    items = [step.batch.items[i] for i in step.taken]
    BATCH_ITEMS.observe(len(items))
    return step.batch.lane.prepare(items)


def _collected(step: _Pass, collect: Collect) -> bool:
    """Waits for a pass and keeps its results in its batch; True when that completes the
    batch. (The results of a batch that failed meanwhile are waited for, not kept.)"""
    results = collect()
    batch = step.batch
    if batch.failed:
        return False
    if len(results) != len(step.taken):  # an engine's bug, failed as its batch's error
        raise RuntimeError(f"a pass of {len(step.taken)} inputs gave {len(results)} results")
    for index, result in zip(step.taken, results, strict=True):
        batch.results[index] = result
    batch.left -= 1
    return batch.left == 0


def _failed(batch: _Batch, exc: Exception, todo: deque[_Pass]) -> None:
    """A pass of `batch` raised: its other passes are dropped and each of its requests is
    tried alone, next, to find the one at fault; a request alone gets the error."""
    if batch.failed:
        return
    batch.failed = True
    kept = [step for step in todo if step.batch is not batch]
    todo.clear()
    if len(batch.pendings) == 1:
        todo.extend(kept)
        _settle([(batch.pendings[0], exc)])
        return
    for pending in batch.pendings:
        alone = _Batch(batch.lane, [pending], pending.items, [None] * len(pending.items))
        todo.extend(_passes(alone))
    todo.extend(kept)


def _split(batch: _Batch) -> list[list[Any]]:
    """The batch's results, request by request."""
    out, start = [], 0
    for pending in batch.pendings:
        out.append(batch.results[start : start + len(pending.items)])
        start += len(pending.items)
    return out


def _settle(outcomes: list[tuple[_Pending, Any]]) -> None:
    """Each request's results (or error) set on its own loop: one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, Any]]] = {}
    for pending, outcome in outcomes:
        by_loop.setdefault(pending.loop, []).append((pending, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_set, settled)


def _set(settled: list[tuple[_Pending, Any]]) -> None:
    for pending, outcome in settled:
        if pending.future.done():
            continue
        if isinstance(outcome, BaseException):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)


class DynamicBatcher(Generic[Item]):
    """Requests of one kind of pass (`prepare`'s) on a model's thread. `size` orders a batch's
    inputs for passes of like length (a text's length)."""

    def __init__(
        self,
        thread: ModelThread,
        prepare: Prepare,
        size: Callable[[Item], int] = lambda item: 0,
        max_items: int = 64,
    ):
        self._thread = thread
        self._lane = thread.lane(prepare, size, max_items)

    async def submit(self, items: list[Item]) -> list[Any]:
        """The results for `items`, computed together with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._thread.put(self._lane, _Pending(items, future, loop))
        return await future
