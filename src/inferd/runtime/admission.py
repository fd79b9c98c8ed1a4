"""Who gets a model's next free slot.

Each replica works on at most `slots` requests at once: what its engine runs side by side
(llama.cpp's slots, vLLM's batch, the embedding batcher), or the launch's `request_limits`.
Requests beyond that wait here, in one first-come-first-served queue per model, rather than
inside the engine: the server then knows the true queue depth, a client that leaves while
waiting costs the model nothing, and the queue is bounded. A full queue answers 429 with a
Retry-After estimated from how long slots have recently been held.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence

from inferd.errors import TooManyRequests
from inferd.runtime.replica import Replica

# How much each finished request moves the estimate of how long a slot is held.
_SMOOTHING = 0.2


class Admission:
    def __init__(self, uid: str, max_queue: int, replicas: Callable[[], Sequence[Replica]]):
        self.uid = uid
        self.max_queue = max_queue
        self._replicas = replicas
        self._waiting: deque[asyncio.Future[Replica]] = deque()
        self.held_seconds = 1.0  # moving mean of how long a request holds its slot

    @property
    def queued(self) -> int:
        return sum(not f.done() for f in self._waiting)

    def admit_now(self) -> Replica | None:
        """A slot for a request that just arrived, if one is free and nobody waits before it."""
        while self._waiting and self._waiting[0].done():  # callers that left or timed out
            self._waiting.popleft()
        if self._waiting:
            return None
        replica = _least_busy_free(self._replicas())
        if replica is not None:
            _hold(replica)
        return replica

    async def wait(self, timeout: float) -> Replica:
        """Queue for a slot; 429 if the queue is full or no slot came within `timeout`."""
        if self.queued >= self.max_queue:
            raise self._busy(f"its queue is full ({self.max_queue} requests wait already)")
        future: asyncio.Future[Replica] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise self._busy(f"no slot came free within {timeout:.0f}s") from None
        except BaseException:
            # The caller left (a disconnect) just as a slot was handed to it: give it on.
            if future.done() and not future.cancelled():
                self.release(future.result(), None)
            raise
        finally:
            if not future.done():
                future.cancel()

    def release(self, replica: Replica, held_for: float | None) -> None:
        """A request is done with `replica`; the next waiter, if any, takes the slot."""
        replica.inflight -= 1
        if held_for is not None:
            self.held_seconds += _SMOOTHING * (held_for - self.held_seconds)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to waiters in arrival order (also after a replica becomes ready)."""
        while self._waiting:
            if self._waiting[0].done():  # its caller left or timed out
                self._waiting.popleft()
                continue
            replica = _least_busy_free(self._replicas())
            if replica is None:
                return
            _hold(replica)
            self._waiting.popleft().set_result(replica)

    def fail_all(self, exc: Exception) -> None:
        """The model went away: everyone waiting hears why."""
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved up by one more request than it holds."""
        slots = sum(r.slots or 1 for r in self._replicas() if r.ready) or 1
        return max(1, min(600, math.ceil(self.held_seconds * (self.queued + 1) / slots)))

    def _busy(self, why: str) -> TooManyRequests:
        return TooManyRequests(
            f"model {self.uid!r} is busy: {why}; retry later, launch more replicas, or raise "
            "INFERD_MAX_QUEUE",
            retry_after=self.retry_after(),
            param="model",
        )


def _least_busy_free(replicas: Sequence[Replica]) -> Replica | None:
    free = [r for r in replicas if r.ready and (r.slots is None or r.inflight < r.slots)]
    return min(free, key=lambda r: r.inflight) if free else None


def _hold(replica: Replica) -> None:
    replica.inflight += 1
    replica.served += 1
