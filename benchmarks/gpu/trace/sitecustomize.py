"""A timeline of a model process's passes and frames, for `embeddings.py --trace DIR`.

Put on the server's PYTHONPATH (which its model processes inherit), this records, in each model
process, when frames arrive and answers leave (`runtime/frames.py`) and each stage of the model
thread (`engines/batching.py`: waiting for work, preparing, launching and collecting a pass,
handing answers to the loop), with `time.perf_counter()` (the same clock in every process), and
writes them to DIR/PID.json every second. `trace_report.py` reads them. Nothing of inferd's
behaviour changes but the few microseconds a record costs.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time
from typing import Any

_DIR = os.environ.get("INFERD_BENCH_TRACE")
_EVENTS: list[tuple[Any, ...]] = []


def _record(*event: Any) -> None:
    _EVENTS.append(event)  # list.append holds the interpreter lock: safe from any thread


def _writer() -> None:
    assert _DIR is not None
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    while True:
        time.sleep(1.0)
        if _EVENTS:
            with open(path + ".new", "w") as out:
                json.dump(_EVENTS, out)
            os.replace(path + ".new", path)


# The frame a request came in (connection, frame id), for the records its engine call makes.
_FRAME: contextvars.ContextVar[tuple[int, int] | None]
_FRAME = contextvars.ContextVar("frame", default=None)


def _frames(module: Any) -> None:
    """("in", time, connection, frame id) as a request's frame is cut from the bytes received,
    ("out", ...) once its answer is written."""
    asked = module._Answering._asked

    @functools.wraps(asked)
    def _asked(self: Any, head: Any, body: bytes) -> None:
        _record("in", time.perf_counter(), id(self), head["id"])
        asked(self, head, body)

    reply = module._Answering._reply

    @functools.wraps(reply)
    async def _reply(self: Any, n: int, *args: Any) -> None:
        _FRAME.set((id(self), n))  # this task's context, copied into the engine call's task
        await reply(self, n, *args)
        _record("out", time.perf_counter(), id(self), n)

    module._Answering._asked = _asked
    module._Answering._reply = _reply


def _batching(module: Any) -> None:
    """("put", time, connection, frame id, request, inputs) as a request joins the model's
    queue; ("take", start, end, want, batch or None, [request, ...]) for each wait for work;
    (stage, start, end, batch, inputs) for each prepare, launch and collected of a pass;
    ("settle", time, [request, ...]) as answers are handed to the loop. A request is its
    future's id, a batch its object's."""
    put = module.ModelThread.put

    @functools.wraps(put)
    def _put(self: Any, lane: Any, pending: Any) -> None:
        frame = _FRAME.get() or (0, 0)
        _record("put", time.perf_counter(), *frame, id(pending.future), len(pending.items))
        put(self, lane, pending)

    stage = module.ModelThread._stage

    @functools.wraps(stage)
    def _stage(self: Any, step: Any, todo: Any, call: Any) -> Any:
        kind = getattr(getattr(call, "func", None), "__name__", "launch").strip("_")
        started = time.perf_counter()
        try:
            return stage(self, step, todo, call)
        finally:
            _record(kind, started, time.perf_counter(), id(step.batch), len(step.taken))

    take = module.ModelThread._take

    @functools.wraps(take)
    def _take(self: Any, want: Any, until: Any) -> Any:
        started = time.perf_counter()
        batch = take(self, want, until)
        taken = [] if batch is None else [id(p.future) for p in batch.pendings]
        _record("take", started, time.perf_counter(), want, batch and id(batch), taken)
        return batch

    settle = module._settle

    @functools.wraps(settle)
    def _settle(outcomes: Any) -> None:
        _record("settle", time.perf_counter(), [id(pending.future) for pending, _ in outcomes])
        settle(outcomes)

    module.ModelThread.put = _put
    module.ModelThread._stage = _stage
    module.ModelThread._take = _take
    module._settle = _settle


_PATCHES = {"inferd.runtime.frames": _frames, "inferd.engines.batching": _batching}


class _Patching(importlib.abc.MetaPathFinder):
    """Finds the modules to patch as the other finders do, and patches each once loaded."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            _PATCHES[name](module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _DIR and "inferd.runtime.worker" in " ".join(sys.orig_argv):
    sys.meta_path.insert(0, _Patching())
    threading.Thread(target=_writer, daemon=True, name="trace").start()
