"""A real `inferd serve` in a subprocess, for the benchmarks: start, watch its models, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def proc_stat(pid: int, tid: int | None = None) -> tuple[int, float]:
    """A process's parent and the CPU time it has used so far (user and system, seconds); with
    `tid`, that thread's of the process alone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    return proc_stat(pid, tid)[1]


class BenchServer:
    def __init__(self, *args: str, home: Path | None = None):
        """Starts the server with `args` and returns once /health answers."""
        self.home = home or Path(tempfile.mkdtemp(prefix="inferd-bench-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inferd", "serve", "--port", str(self.port), *args],
            env={**os.environ, "INFERD_HOME": str(self.home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.02)
        self.health_seconds = time.perf_counter() - self.started

    def models(self) -> dict[str, dict]:
        return {m["id"]: m for m in httpx.get(f"{self.url}/v1/models").json()["data"]}

    def wait_ready(self, uids: set[str], exclude_pid: int | None = None) -> float:
        """Waits until every uid is ready (in a process other than `exclude_pid`); the time."""
        while True:
            models = self.models()
            if all(
                models.get(u, {}).get("status") == "ready" and models[u]["pid"] != exclude_pid
                for u in uids
            ):
                return time.perf_counter()
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(60)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to a process started in its own session and everything in it, SIGKILL after a
    minute."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_memory_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
            )
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        pending.extend(int(c) for c in children)
    return total / 1024
