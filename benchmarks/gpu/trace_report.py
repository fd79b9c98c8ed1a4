"""Where a request's time goes inside a model process, load by load, from `embeddings.py --trace`.

    python benchmarks/gpu/trace_report.py LOG TRACE_DIR

LOG is embeddings.py's output (its 32-client loads name their `window`), TRACE_DIR the folder
given to `--trace`. For each load, over the requests answered in it (one input each), the mean
of each step of a request's way through the model process, in milliseconds:

- `frame -> queue`: from its frame being read to its joining the model's queue (the loop);
- `queue -> taken`: waiting for the model thread to take it into a pass;
- `taken -> launched`: its pass prepared (tokenized) and launched, after the pass before it
  was collected where there was no room beside it;
- `launched -> collected`: on the device, and until the model thread collected it;
- `collected -> settled`: the other passes' launches in between, until its answer was handed
  to the loop; `settled -> written`: the loop writing its answer;
- `inside`: frame to answer; `outside`: the rest of a client's turn (32 clients / rate -
  inside): the way to the client and back, and the client itself.

and the passes: how many, their inputs, the share of the load's time with none on the device
(`idle`) and with two at once (`both`); then a second table of each pass's stages on the model
thread (`PASS`): tokenizing (`prepare`), launching, collecting.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

STEPS = (
    ("frame -> queue", "in", "put"),
    ("queue -> taken", "put", "taken"),
    ("taken -> launched", "taken", "launched"),
    ("launched -> collected", "launched", "collected"),
    ("collected -> settled", "collected", "settled"),
    ("settled -> written", "settled", "out"),
)
# A pass's stages on the model thread, in seconds: from its batch taken to its tokenizing,
# tokenizing, from then to its launch (a pass in flight collected first where there was no
# room beside it), the launch, and collecting it (waiting for the device included).
PASS = (
    ("taken -> prepare", lambda p: p["prepare"][0] - p["taken"]),
    ("prepare", lambda p: p["prepare"][1] - p["prepare"][0]),
    ("prepared -> launch", lambda p: p["launch"][0] - p["prepare"][1]),
    ("launch", lambda p: p["launch"][1] - p["launch"][0]),
    ("collect", lambda p: p["collected"][1] - p["collected"][0]),
)

# The records of a span of time: (kind, start, end, ...); the others are (kind, time, ...).
_SPANS = frozenset(("take", "prepare", "launch", "collected"))


def requests(events: list[list[Any]]) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """Each request's times (keys: the STEPS' ends) and each pass's (when taken; prepare,
    launch and collected start and end; inputs), rebuilt from one model process's records in
    time order."""
    # In the order they ended: a wait for work starts before the requests it takes arrive.
    events = sorted(events, key=lambda e: e[2] if e[0] in _SPANS else e[1])
    arrived: dict[tuple[int, int], float] = {}
    by_future: dict[int, dict[str, float]] = {}
    by_frame: dict[tuple[int, int], dict[str, float]] = {}
    by_batch: dict[int, list[dict[str, float]]] = {}
    taken: dict[int, float] = {}  # when each batch was taken, and tokenized
    prepared: dict[int, tuple[float, float]] = {}
    passes: dict[int, dict[str, Any]] = {}
    done: list[dict[str, float]] = []
    every_pass: list[dict[str, Any]] = []
    for event in events:
        kind = event[0]
        if kind == "in":
            arrived[(event[2], event[3])] = event[1]
        elif kind == "put":
            _, at, conn, frame, future, _items = event
            times = {"in": arrived.pop((conn, frame), at), "put": at}
            by_future[future] = by_frame[(conn, frame)] = times
        elif kind == "take" and event[4] is not None:
            members = [by_future[f] for f in event[5] if f in by_future]
            for times in members:
                times["taken"] = event[2]
            by_batch[event[4]] = members
            taken[event[4]] = event[2]
        elif kind == "prepare":
            prepared[event[3]] = (event[1], event[2])
        elif kind in ("launch", "collected"):
            _, start, end, batch, inputs = event
            for times in by_batch.get(batch, []):
                times["launched" if kind == "launch" else "collected"] = end
            if kind == "launch":
                passes[batch] = {
                    "taken": taken.pop(batch, start),
                    "prepare": prepared.pop(batch, (start, start)),
                    "launch": (start, end),
                    "inputs": inputs,
                }
            elif batch in passes:
                passes[batch]["collected"] = (start, end)
                every_pass.append(passes.pop(batch))
        elif kind == "settle":
            for future in event[2]:
                times = by_future.pop(future, None)
                if times is not None:
                    times["settled"] = event[1]
        elif kind == "out":
            times = by_frame.pop((event[2], event[3]), None)
            if times is not None and "settled" in times:
                times["out"] = event[1]
                done.append(times)
    return done, every_pass


def device(passes: list[dict[str, Any]], start: float, end: float) -> tuple[float, float]:
    """The share of [start, end] with no pass on the device, and with two or more: a pass is
    there from its launch's start to its collection's end."""
    edges = []
    for one in passes:
        if one["launch"][0] < end and one["collected"][1] > start:
            edges += [(max(one["launch"][0], start), 1), (min(one["collected"][1], end), -1)]
    idle = both = 0.0
    depth, last = 0, start
    for at, change in sorted(edges):
        if depth == 0:
            idle += at - last
        elif depth >= 2:
            both += at - last
        depth, last = depth + change, at
    if depth == 0:
        idle += end - last
    span = end - start
    return idle / span, both / span


def report(log: Path, traces: Path) -> None:
    loaded = [
        json.loads(line)
        for path in sorted(traces.rglob("*.json"))
        for line in [path.read_text()]
        if line.strip()
    ]
    rebuilt = [requests(events) for events in loaded]
    print(
        "| load | rate | passes (inputs) | idle | both | "
        + " | ".join(name for name, _, _ in STEPS)
        + " | inside | outside |"
    )
    print("|---" * (7 + len(STEPS)) + "|")
    stages: list[tuple[str, list[float]]] = []
    for line in log.read_text().splitlines():
        if not line.startswith("{") or '"window"' not in line:
            continue
        load = json.loads(line)
        start, end = load["window"]
        # The model process of this load: the one that answered most in its window.
        done, passes = max(
            rebuilt, key=lambda r: sum(start <= t["out"] <= end for t in r[0]), default=([], [])
        )
        answered = [t for t in done if start <= t["out"] <= end]
        if not answered:
            continue
        rate = len(answered) / (end - start)
        held = [p for p in passes if start <= p["launch"][0] and p["collected"][1] <= end]
        idle, both = device(passes, start, end)
        steps = [statistics.mean(t[b] - t[a] for t in answered) * 1e3 for _, a, b in STEPS]
        inside = statistics.mean(t["out"] - t["in"] for t in answered) * 1e3
        outside = 32 / rate * 1e3 - inside
        label = f"{load['model']} {'direct' if load.get('direct') else load.get('load')}"
        inputs = statistics.mean(p["inputs"] for p in held) if held else 0
        print(
            f"| {label} | {rate:,.0f} | {len(held)} ({inputs:.1f}) | {idle:.2f} | {both:.2f} | "
            + " | ".join(f"{s:.2f}" for s in steps)
            + f" | {inside:.2f} | {outside:.2f} |"
        )
        if held:
            stages.append((label, [statistics.mean(f(p) for p in held) * 1e3 for _, f in PASS]))
    print("\n| load | " + " | ".join(name for name, _ in PASS) + " |")
    print("|---" * (1 + len(PASS)) + "|")
    for label, means in stages:
        print(f"| {label} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", type=Path, help="embeddings.py's output")
    parser.add_argument("traces", type=Path, help="the folder given to --trace")
    args = parser.parse_args()
    report(args.log, args.traces)


if __name__ == "__main__":
    main()
