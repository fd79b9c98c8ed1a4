"""Whole answers in frames between a relay and a model process (`runtime/frames.py`): many
requests on one connection, each answer to its own request, whatever the order or size; a
process that is not there, or goes away, is an error the relay can act on, and a channel finds
the restarted process."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest

from inferd.runtime.frames import (
    ChannelError,
    ChannelRefused,
    FrameChannel,
    Whole,
    serve_frames,
)

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


async def _echo(path: str, body: bytes, request_id: str) -> Whole:
    """Answers after the delay the request names: later requests may be answered first."""
    asked = orjson.loads(body)
    await asyncio.sleep(asked.get("delay", 0))
    if asked.get("raise"):
        raise RuntimeError("a bug in the answer")
    answer = {"path": path, "request_id": request_id, "n": asked["n"], "pad": asked.get("pad")}
    return Whole(200 if asked["n"] >= 0 else 400, "application/json", orjson.dumps(answer))


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a test's coroutine on each loop: inferd serves on uvloop, whose transports differ."""
    if request.param == "uvloop":
        import uvloop

        return uvloop.run
    return asyncio.run


def _ask(n: int, **more: object) -> bytes:
    return orjson.dumps({"n": n, **more})


def test_concurrent_requests_get_their_own_answers_in_any_order(
    tmp_path: Path, run: Runner
) -> None:
    path = str(tmp_path / "m.sock.frames")

    async def main() -> list[Whole]:
        server = await serve_frames(path, _echo)
        channel = FrameChannel(path)
        try:
            asks = [
                channel.post("/embeddings", _ask(n, delay=(20 - n) / 1000), f"r{n}")
                for n in range(20)
            ]
            big = channel.post("/rerank", _ask(-1, pad="x" * (4 << 20)), "big")
            return list(await asyncio.gather(*asks, big))
        finally:
            channel.close()
            server.close()

    *answers, big = run(main())
    for n, whole in enumerate(answers):
        body = orjson.loads(whole.body)
        assert (whole.status, whole.content_type) == (200, "application/json")
        assert (body["n"], body["request_id"], body["path"]) == (n, f"r{n}", "/embeddings")
    assert big.status == 400 and len(orjson.loads(big.body)["pad"]) == 4 << 20


def test_nothing_listening_is_refused_before_anything_is_sent(tmp_path: Path, run: Runner) -> None:
    async def main() -> None:
        await FrameChannel(str(tmp_path / "absent.frames")).post("/embeddings", _ask(1), "r")

    with pytest.raises(ChannelRefused):
        run(main())


# A model process's answering side alone, in a process of its own to be killed.
_PROCESS = """
import asyncio, sys
import orjson
from inferd.runtime.frames import Whole, serve_frames

async def answer(path, body, request_id):
    asked = orjson.loads(body)
    await asyncio.sleep(asked.get("delay", 0))
    return Whole(200, "application/json", body)

async def main():
    await serve_frames(sys.argv[1], answer)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _answering_process(path: str) -> subprocess.Popen[bytes]:
    Path(path).unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-c", _PROCESS, path])
    deadline = time.monotonic() + 30
    while not Path(path).exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return process


def test_a_process_going_away_fails_what_waits_and_its_successor_is_found(
    tmp_path: Path, run: Runner
) -> None:
    path = str(tmp_path / "m.sock.frames")

    async def main() -> tuple[BaseException | Whole, Whole]:
        first = _answering_process(path)
        channel = FrameChannel(path)
        try:
            await channel.post("/embeddings", _ask(0), "warm")  # the connection is open
            waiting = asyncio.ensure_future(channel.post("/embeddings", _ask(1, delay=30), "slow"))
            await asyncio.sleep(0.1)
            first.kill()
            outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]
            second = _answering_process(path)  # restarted, at the same path
            try:
                return outcome, await channel.post("/embeddings", _ask(2), "again")
            finally:
                second.kill()
        finally:
            channel.close()
            first.kill()

    outcome, again = run(main())
    assert isinstance(outcome, ChannelError)
    assert orjson.loads(again.body)["n"] == 2


def test_a_caller_giving_up_leaves_the_channel_answering_the_others(
    tmp_path: Path, run: Runner
) -> None:
    path = str(tmp_path / "m.sock.frames")

    async def main() -> Whole:
        server = await serve_frames(path, _echo)
        channel = FrameChannel(path)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(channel.post("/embeddings", _ask(1, delay=0.2), "a"), 0.05)
            await asyncio.sleep(0.3)  # its answer comes, for nobody
            return await channel.post("/embeddings", _ask(2), "b")
        finally:
            channel.close()
            server.close()

    assert orjson.loads(run(main()).body)["request_id"] == "b"


def test_an_answer_that_raises_is_a_500_not_a_hang(tmp_path: Path, run: Runner) -> None:
    path = str(tmp_path / "m.sock.frames")

    async def main() -> Whole:
        server = await serve_frames(path, _echo)
        channel = FrameChannel(path)
        try:
            return await asyncio.wait_for(channel.post("/rerank", _ask(1, **{"raise": 1}), "r"), 5)
        finally:
            channel.close()
            server.close()

    whole = run(main())
    assert whole.status == 500
    assert "a bug in the answer" in orjson.loads(whole.body)["error"]["message"]


@pytest.mark.slow
def test_a_model_process_that_cannot_make_its_frames_socket_answers_over_http() -> None:
    """A socket's path holds at most 107 bytes: under a temporary folder that leaves room for
    the model process's HTTP socket and not for its frames socket beside it, the model still
    serves, over HTTP."""
    import httpx

    from tests.conftest import EMBEDDING, InferdServer

    base = Path(tempfile.mkdtemp(dir="/tmp"))
    # TMPDIR/inferd-XXXXXXXX/m1.sock is len(TMPDIR) + 24 bytes; the frames socket 7 more.
    deep = base / ("d" * (80 - len(str(base)) - 1))
    deep.mkdir()
    server = InferdServer(base / "home", env={"TMPDIR": str(deep)})
    try:
        body = {"model_name": EMBEDDING, "model_type": "embedding", "model_uid": "minilm"}
        launched = httpx.post(f"{server.url}/v1/models", json=body, timeout=300)
        assert launched.status_code == 200, launched.text
        answer = httpx.post(
            f"{server.url}/v1/embeddings", json={"model": "minilm", "input": "hello"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["data"][0]["embedding"]) == 384
        logs = httpx.get(f"{server.url}/v1/models/minilm/logs", params={"tail": 200}).text
        assert "whole answers over HTTP" in logs
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
