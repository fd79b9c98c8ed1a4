"""Where a server's CPU goes during a load: the cores each of its processes kept busy, and
py-spy's sampled stacks of each for the loads asked for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: shared helpers
from inferd_server import cpu_seconds, proc_stat


def _tasks(pid: int) -> list[tuple[int, int]]:
    with suppress(OSError):
        return [(pid, int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()]
    return []


def _name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


class Watch:
    """The processes of one server (its root and every descendant): how many cores each kept
    busy during a load, and, for the loads named in `spy_streams`, where each one's time went
    (py-spy's sampled stacks, written to `spy_dir`)."""

    def __init__(self, label: str, root: int, spy_streams: set[int], spy_dir: Path | None):
        self.label, self.root = label, root
        self.spy_streams, self.spy_dir = spy_streams, spy_dir

    def tree(self) -> dict[int, str]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError, ValueError, IndexError):
                    parents[int(entry.name)] = proc_stat(int(entry.name))[0]
        found, frontier = {self.root: 0}, [self.root]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in found:
                    found[pid] = found[parent] + 1
                    frontier.append(pid)
        names = {}
        for pid, depth in found.items():
            with suppress(OSError):
                names[pid] = f"{depth}:{_name(pid)}:{pid}"
        return names

    @contextmanager
    def during(
        self, streams: int, tag: str = "", threads: bool = False
    ) -> Iterator[dict[str, float]]:
        """`tag` tells apart the stacks of loads of one size (a text length). `threads`: also
        each thread that kept a twentieth of a core busy, as `PROCESS/main` (the process's first
        thread: an event loop) or `PROCESS/TID`."""
        names = self.tree()
        before = {pid: cpu_seconds(pid) for pid in names}
        tasks: dict[tuple[int, int], float] = {}
        for pid in names if threads else []:
            for task in _tasks(pid):
                with suppress(OSError):
                    tasks[task] = cpu_seconds(*task)
        spies = self._spy(names, streams, tag)
        started = time.time()
        cores: dict[str, float] = {}
        try:
            yield cores
        finally:
            seconds = time.time() - started
            for pid, name in names.items():
                with suppress(OSError):
                    used = (cpu_seconds(pid) - before[pid]) / seconds
                    if used >= 0.01:
                        cores[name] = round(used, 2)
            for (pid, tid), used_before in tasks.items():
                with suppress(OSError):
                    used = (cpu_seconds(pid, tid) - used_before) / seconds
                    if used >= 0.05:
                        cores[f"{names[pid]}/{'main' if tid == pid else tid}"] = round(used, 2)
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            for spy in spies:
                with suppress(subprocess.TimeoutExpired):
                    spy.wait(30)

    def _spy(self, names: dict[int, str], streams: int, tag: str) -> list[subprocess.Popen]:
        if streams not in self.spy_streams or self.spy_dir is None:
            return []
        self.spy_dir.mkdir(parents=True, exist_ok=True)
        spies = []
        for pid, name in names.items():
            out = self.spy_dir / f"{self.label}{tag}-{streams}-{name.replace(':', '-')}.txt"
            argv = ["py-spy", "record", "--pid", str(pid), "--rate", "250", "--nonblocking",
                    "--format", "raw", "--output", str(out)]  # fmt: skip
            # e.g. "--idle --native": where a thread waits (the GPU, the interpreter's lock)
            argv += os.environ.get("PY_SPY_ARGS", "").split()
            quiet = subprocess.DEVNULL
            spies.append(subprocess.Popen(argv, stdout=quiet, stderr=quiet))
        return spies
