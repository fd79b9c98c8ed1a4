"""Recovery figures: restore after a SIGKILLed server, crash-to-ready, errors seen during a crash.

    .venv/bin/python benchmarks/recovery.py

The first two are compared with a cold launch of the same models (what a user of a server that
forgets, like Xinference, pays by hand after every restart, plus their own typing).
"""

from __future__ import annotations

import collections
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
from inferd_server import BenchServer

LLM = "gemma-3-270m"
EMBEDDING = "all-MiniLM-L6-v2"
CHAT = {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="inferd-bench-"))
    server = BenchServer(home=home)
    cold = {}
    for name, kind in ((LLM, "LLM"), (EMBEDDING, "embedding")):
        t = time.perf_counter()
        httpx.post(
            f"{server.url}/v1/models", json={"model_name": name, "model_type": kind}, timeout=300
        ).raise_for_status()
        cold[name] = time.perf_counter() - t
    server.stop(signal.SIGKILL)

    server = BenchServer(home=home)
    restored = server.wait_ready({LLM, EMBEDDING}) - server.started

    # Crash under load: 4 clients chatting; the LLM's process is SIGKILLed.
    outcomes: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                try:
                    r = client.post(f"{server.url}/v1/chat/completions", json=CHAT)
                    outcomes[str(r.status_code)] += 1
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    pid = server.models()[LLM]["pid"]
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    crash_to_ready = server.wait_ready({LLM}, exclude_pid=pid) - killed
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join()
    server.stop()

    cold_both = sum(cold.values())
    print(f"{'measure':48} {'seconds':>8}")
    print(f"{'cold launch of both models, one after the other':48} {cold_both:8.2f}")
    print(f"{'restore of both after SIGKILL (start to ready)':48} {restored:8.2f}")
    print(f"{'crash (kill -9) to ready, ' + LLM:48} {crash_to_ready:8.2f}")
    unclean = {k: v for k, v in outcomes.items() if k not in ("200", "503")}
    print(f"outcomes under load during the crash: {dict(outcomes)}")
    print(f"non-clean errors: {sum(unclean.values())}")


if __name__ == "__main__":
    main()
