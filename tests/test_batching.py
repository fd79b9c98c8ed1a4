"""Dynamic batching: requests that arrive together share a pass; each gets its own answers."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

from inferd.engines.batching import IN_FLIGHT, DynamicBatcher, ModelThread, Running, at_once
from inferd.errors import ModelUnavailable
from tests.conftest import run_together


def _run_with_log(log: list[list[str]]):  # type: ignore[no-untyped-def]
    def run(items: list[str]) -> list[str]:
        log.append(list(items))
        if "bad" in items:
            raise ValueError("bad input")
        time.sleep(0.05)  # a forward pass takes time, so later requests queue up
        return [item.upper() for item in items]

    return run


def test_concurrent_requests_share_passes_and_get_their_own_results() -> None:
    passes: list[list[str]] = []

    async def main() -> list[list[str]]:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), at_once(_run_with_log(passes)), max_items=64
        )
        requests = [[f"r{i}a", f"r{i}b"] for i in range(10)]
        return await asyncio.gather(*(batcher.submit(r) for r in requests))

    results = asyncio.run(main())
    assert results == [[f"R{i}A", f"R{i}B"] for i in range(10)]
    assert len(passes) < 10  # not one pass per request
    assert sum(len(p) for p in passes) == 20


def test_a_lone_request_does_not_wait() -> None:
    async def main() -> float:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), at_once(lambda items: items), max_items=64
        )
        started = time.perf_counter()
        await batcher.submit(["x"])
        return time.perf_counter() - started

    assert asyncio.run(main()) < 0.5  # no timer: only the pass itself


def test_a_bad_request_fails_alone() -> None:
    passes: list[list[str]] = []

    async def main() -> list[object]:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), at_once(_run_with_log(passes)), max_items=64
        )
        blocker = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.01)  # the others queue behind it and go in one batch
        rest = [batcher.submit(["good"]), batcher.submit(["bad"]), batcher.submit(["fine"])]
        return await asyncio.gather(blocker, *rest, return_exceptions=True)

    first, good, bad, fine = asyncio.run(main())
    assert first == ["FIRST"] and good == ["GOOD"] and fine == ["FINE"]
    assert isinstance(bad, ValueError)
    assert ["good", "bad", "fine"] in passes  # tried together first


def test_batches_respect_the_size_cap() -> None:
    passes: list[list[str]] = []

    async def main() -> None:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), at_once(_run_with_log(passes)), max_items=4
        )
        await asyncio.gather(*(batcher.submit([f"{i}"]) for i in range(12)))

    asyncio.run(main())
    assert max(len(p) for p in passes) <= 4


def _staged(log: list[tuple[str, list[str]]], launching: threading.Event | None = None):  # type: ignore[no-untyped-def]
    """A pass in stages that logs each one; `bad` fails at the stage it names
    (`bad-prepare`, `bad-launch`, `bad-collect`)."""

    def prepare(items: list[str]):  # type: ignore[no-untyped-def]
        log.append(("prepare", items))
        if "bad-prepare" in items:
            raise ValueError("bad input")

        def launch():  # type: ignore[no-untyped-def]
            log.append(("launch", items))
            if launching is not None:
                launching.wait(5)  # held, so the test can queue more meanwhile
            if "bad-launch" in items:
                raise ValueError("bad input")

            def collect() -> list[str]:
                log.append(("collect", items))
                if "bad-collect" in items:
                    raise ValueError("bad input")
                return [item.upper() for item in items]

            return collect

        return launch

    return prepare


def _held_first_pass(max_items: int, later: list[list[str]]) -> list[tuple[str, list[str]]]:
    """The stages' log when `later` requests arrive while a first pass (["a"]) is held in its
    launch."""
    log: list[tuple[str, list[str]]] = []
    release = threading.Event()

    async def main() -> list[list[str]]:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), _staged(log, release), max_items=max_items
        )
        first = asyncio.ensure_future(batcher.submit(["a"]))
        while ("launch", ["a"]) not in log:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(items)) for items in later]
        await asyncio.sleep(0.05)  # queued before the first pass's launch returns
        release.set()
        return list(await asyncio.gather(first, *rest))

    assert asyncio.run(main()) == [["A"], *([i.upper() for i in items] for items in later)]
    return log


def test_a_full_pass_is_prepared_while_one_runs() -> None:
    """The host's part of a full next pass (tokenizing) comes before the running pass is
    waited for; it starts only once the running one is collected."""
    assert _held_first_pass(2, [["b", "c"]]) == [
        ("prepare", ["a"]),
        ("launch", ["a"]),
        ("prepare", ["b", "c"]),
        ("collect", ["a"]),
        ("launch", ["b", "c"]),
        ("collect", ["b", "c"]),
    ]


def test_a_pass_with_room_waits_for_what_arrives_while_one_runs() -> None:
    assert _held_first_pass(64, [["b"], ["c"]]) == [
        ("prepare", ["a"]),
        ("launch", ["a"]),
        ("collect", ["a"]),
        ("prepare", ["b", "c"]),
        ("launch", ["b", "c"]),
        ("collect", ["b", "c"]),
    ]


def _on_device(log: list[tuple[str, list[str]]], held: dict[str, threading.Event], seconds: float):  # type: ignore[no-untyped-def]
    """Passes a device runs on its own (`Running`, expected to take `seconds`): each is done
    once the events `held` names for its inputs are set."""

    def prepare(items: list[str]):  # type: ignore[no-untyped-def]
        log.append(("prepare", items))

        def launch() -> Running[list[str]]:
            log.append(("launch", items))

            def wait() -> list[str]:
                for item in items:
                    if item in held:
                        held[item].wait(5)
                log.append(("collect", items))
                return [item.upper() for item in items]

            return Running(wait, time.perf_counter() + seconds)

        return launch

    return prepare


def _beside(
    first: list[str], later: list[list[str]], seconds: float
) -> list[tuple[str, list[str]]]:
    """The stages' log when `later` requests arrive while a first pass (`first`, expected to
    take `seconds`) runs on the device, held there until they have all arrived and 0.1 s more."""
    log: list[tuple[str, list[str]]] = []
    held = {item: threading.Event() for item in first}

    async def main() -> list[list[str]]:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), _on_device(log, held, seconds), max_items=64
        )
        running = asyncio.ensure_future(batcher.submit(first))
        while ("launch", first) not in log:
            await asyncio.sleep(0.001)
        rest = []
        for items in later:
            rest.append(asyncio.ensure_future(batcher.submit(items)))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        for event in held.values():
            event.set()
        return list(await asyncio.gather(running, *rest))

    assert asyncio.run(main()) == [[i.upper() for i in items] for items in [first, *later]]
    return log


def test_a_pass_as_large_as_the_running_one_is_launched_beside_it() -> None:
    """Two requests of one input each, while a pass of two runs: they wait until together
    they are as many, then go beside it, before it is collected."""
    assert _beside(["a1", "a2"], [["b"], ["c"]], seconds=5) == [
        ("prepare", ["a1", "a2"]),
        ("launch", ["a1", "a2"]),
        ("prepare", ["b", "c"]),
        ("launch", ["b", "c"]),
        ("collect", ["a1", "a2"]),
        ("collect", ["b", "c"]),
    ]


def test_a_smaller_pass_waits_until_the_running_one_should_be_done() -> None:
    """One input while a pass of two runs: not beside it; once it should be done (0.05 s) it
    is collected, and the next pass follows."""
    assert _beside(["a1", "a2"], [["b"]], seconds=0.05) == [
        ("prepare", ["a1", "a2"]),
        ("launch", ["a1", "a2"]),
        ("collect", ["a1", "a2"]),
        ("prepare", ["b"]),
        ("launch", ["b"]),
        ("collect", ["b"]),
    ]


def test_no_more_than_in_flight_passes_at_once() -> None:
    later = [[f"r{i}"] for i in range(IN_FLIGHT)]
    log = _beside(["a"], later, seconds=5)
    launched = [entry for entry in log if entry[0] == "launch"]
    assert launched[:IN_FLIGHT] == [("launch", ["a"]), *(("launch", r) for r in later[:-1])]
    # The last waits for the first to be collected: the device's buffers are all taken.
    assert log.index(("collect", ["a"])) < log.index(("launch", later[-1]))


@pytest.mark.parametrize("stage", ["prepare", "launch", "collect"])
def test_a_pass_failing_at_any_stage_fails_only_its_request(stage: str) -> None:
    log: list[tuple[str, list[str]]] = []
    release = threading.Event()

    async def main() -> list[object]:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), _staged(log, release), max_items=64
        )
        blocker = asyncio.ensure_future(batcher.submit(["first"]))
        while ("launch", ["first"]) not in log:
            await asyncio.sleep(0.001)
        rest = [
            asyncio.ensure_future(batcher.submit(items))
            for items in (["good"], [f"bad-{stage}"], ["fine", "too"])
        ]
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(blocker, *rest, return_exceptions=True))

    first, good, bad, fine = asyncio.run(main())
    assert first == ["FIRST"] and good == ["GOOD"] and fine == ["FINE", "TOO"]
    assert isinstance(bad, ValueError)
    assert ("prepare", ["good", f"bad-{stage}", "fine", "too"]) in log  # tried together first
    assert ("collect", ["good"]) in log  # then alone


def test_an_engine_giving_too_few_results_fails_that_request_and_the_thread_goes_on() -> None:
    def run(items: list[str]) -> list[str]:
        time.sleep(0.02)
        return items[:-1] if "short" in items else [item.upper() for item in items]

    async def main() -> list[object]:
        batcher: DynamicBatcher[str] = DynamicBatcher(ModelThread("t"), at_once(run))
        first = await asyncio.gather(
            *(batcher.submit(items) for items in (["a"], ["b"], ["short"])),
            return_exceptions=True,
        )
        return [*first, await batcher.submit(["after"])]

    a, b, short, after = asyncio.run(main())
    assert a == ["A"] and b == ["B"] and after == ["AFTER"]
    assert isinstance(short, RuntimeError) and "gave 0 results" in str(short)


def test_a_request_of_many_inputs_runs_in_passes_longest_first() -> None:
    passes: list[list[str]] = []
    items = ["bb", "a", "dddd", "ccc", "eeeee"]

    async def main() -> list[str]:
        batcher: DynamicBatcher[str] = DynamicBatcher(
            ModelThread("t"), at_once(_run_with_log(passes)), len, max_items=2
        )
        return await batcher.submit(items)

    assert asyncio.run(main()) == [item.upper() for item in items]
    assert passes == [["eeeee", "dddd"], ["ccc", "bb"], ["a"]]


def test_closing_fails_the_requests_still_waiting() -> None:
    release = threading.Event()
    log: list[tuple[str, list[str]]] = []

    async def main() -> list[object]:
        thread = ModelThread("t")
        batcher: DynamicBatcher[str] = DynamicBatcher(thread, _staged(log, release))
        running = asyncio.ensure_future(batcher.submit(["running"]))
        while ("launch", ["running"]) not in log:
            await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(batcher.submit(["waiting"]))
        await asyncio.sleep(0.01)  # queued: the thread is held in the running pass's launch
        thread.close()
        release.set()
        later = batcher.submit(["later"])
        return list(await asyncio.gather(running, waiting, later, return_exceptions=True))

    running, waiting, later = asyncio.run(main())
    assert running == ["RUNNING"]  # the pass under way finishes and answers
    assert isinstance(waiting, ModelUnavailable) and isinstance(later, ModelUnavailable)


@pytest.mark.slow
def test_concurrent_embeddings_match_single_ones(launched) -> None:  # type: ignore[no-untyped-def]
    import httpx

    url = f"{launched.url}/v1/embeddings"
    texts = [f"sentence number {i} about topic {i * 7}" for i in range(16)]
    alone = {
        t: httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": t}).json()["data"][0][
            "embedding"
        ]
        for t in texts[:4]
    }
    together: dict[str, list[float]] = {}

    def one(text: str) -> None:
        r = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": [text]}, timeout=60)
        together[text] = r.json()["data"][0]["embedding"]

    run_together(*(functools.partial(one, t) for t in texts), timeout=60)
    assert len(together) == 16
    for text, vector in alone.items():
        assert together[text] == pytest.approx(vector, abs=1e-4)


@pytest.mark.slow
def test_texts_of_mixed_lengths_in_one_request_keep_their_places(launched) -> None:  # type: ignore[no-untyped-def]
    """A pass takes its texts longest first (they pad less); each vector still lands at its
    own index, with its own token count in the total."""
    import httpx

    url = f"{launched.url}/v1/embeddings"
    texts = [
        "short",
        "a much longer sentence about the weather in the mountains over the coming week",
        "a sentence of middling length",
        "x",
    ]
    alone = [httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": t}).json() for t in texts]
    listed = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": texts}).json()
    assert [item["index"] for item in listed["data"]] == [0, 1, 2, 3]
    for item, single in zip(listed["data"], alone, strict=True):
        assert item["embedding"] == pytest.approx(single["data"][0]["embedding"], abs=1e-4)
    tokens = [single["usage"]["prompt_tokens"] for single in alone]
    assert listed["usage"]["prompt_tokens"] == sum(tokens)
