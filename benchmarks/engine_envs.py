"""The light server and its engine environments: installed size and `inferd serve` start time of
the server alone against the server with the demo engines installed beside it (as `make serve`
installs it), and the time to build each engine's environment from an empty uv cache and again
from a warm one.

    .venv/bin/python benchmarks/engine_envs.py [--starts 3] [--engines a,b] [--builds-only]
        [--platform cpu|cuda]

`--platform cuda` builds the CUDA locks' environments (torch's CUDA build from PyPI, ~5 GB each)
on any machine: their imports are measured, no GPU is needed for that.

Prints one JSON line per measurement and tables at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def say(record: dict) -> None:
    print(json.dumps(record), flush=True)


def tree_mb(path: Path) -> float:
    from inferd.envs.store import tree_bytes

    return tree_bytes(path) / 1e6


def make_venv(folder: Path, *installs: list[str]) -> tuple[str, float]:
    """A fresh environment with `installs` run in order; its python and the seconds it took."""
    started = time.perf_counter()
    venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    for args in installs:
        subprocess.run([python, "-m", "pip", "install", "--quiet", *args], check=True)
    return python, time.perf_counter() - started


def start_seconds(python: str, home: Path) -> float:
    """From `inferd serve` to its first healthy answer."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "INFERD_HOME": str(home)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, "-m", "inferd", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(30)


def build_seconds(root: Path, engine: str, cache: Path, platform: str) -> tuple[float, float, str]:
    """Seconds to build `engine`'s environment for `platform` with uv's cache at `cache`; its
    size in MB; its interpreter."""
    from inferd.envs.config import engine_envs
    from inferd.settings import Settings

    os.environ["UV_CACHE_DIR"] = str(cache)
    builder = engine_envs(Settings(home=root))
    plan = builder.plan(engine, platform)
    started = time.perf_counter()
    info = asyncio.run(builder.ensure(plan, lambda line: None))
    return time.perf_counter() - started, tree_mb(Path(info.path)), info.python


def import_seconds(python: str, engine: str) -> tuple[float, float]:
    """Seconds a model process of `engine` spends importing what it needs there, at its first
    start and at the next, as it runs: writing bytecode (runtime.process.worker_env), whatever
    PYTHONDONTWRITEBYTECODE says here."""
    from inferd.envs import SPECS

    code = f"import {SPECS[engine].module}, inferd.runtime.worker"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times = []
    for _ in range(2):
        started = time.perf_counter()
        subprocess.run([python, "-c", code], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--engines", default=None, help="which to build (default: every one)")
    parser.add_argument("--builds-only", action="store_true", help="no server measurements")
    parser.add_argument("--platform", choices=("cpu", "cuda"), help="default: this machine's")
    args = parser.parse_args()
    from inferd.envs import SPECS
    from inferd.runtime.engine_env import current_platform

    platform = args.platform or current_platform()
    engines = args.engines.split(",") if args.engines else list(SPECS)
    work = Path(tempfile.mkdtemp(prefix="engine-envs-bench-"))
    try:
        servers = {}
        measured = []
        if not args.builds_only:
            bare, bare_s = make_venv(work / "bare", ["-e", str(ROOT)])
            demo, demo_s = make_venv(
                work / "demo", ["torch==2.13.0"], ["-e", f"{ROOT}[demo]"]
            )  # as `make serve` installs it
            measured = [("inferd alone", bare, bare_s), ("inferd[demo]", demo, demo_s)]
        for name, python, install_s in measured:
            starts = [start_seconds(python, work / f"home-{i}") for i in range(args.starts)]
            servers[name] = {
                "size_mb": tree_mb(Path(python).parents[1]),
                "install_s": install_s,
                "start_s": statistics.median(starts),
            }
            say({"server": name, **servers[name], "starts": starts})

        builds = {}
        for engine in engines:
            cache = work / f"uv-cache-{engine}"
            cold, size, _ = build_seconds(work / "envs-cold", engine, cache, platform)
            warm, _, python = build_seconds(work / "envs-warm", engine, cache, platform)
            builds[engine] = {
                "empty_cache_s": cold,
                "warm_cache_s": warm,
                "size_mb": size,
            }
            builds[engine]["first_import_s"], builds[engine]["import_s"] = import_seconds(
                python, engine
            )
            say({"engine": engine, "platform": platform, **builds[engine]})
            # Each engine's own cache: the next one starts from an empty one too, and a CUDA
            # build's gigabytes do not pile up.
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(work / "envs-cold", ignore_errors=True)
            shutil.rmtree(work / "envs-warm", ignore_errors=True)

        if servers:
            print("\n| server environment | installed | pip install | `inferd serve` to healthy |")
            print("|---|---|---|---|")
        for name, r in servers.items():
            print(
                f"| {name} | {r['size_mb']:,.0f} MB | {r['install_s']:.0f} s "
                f"| {r['start_s']:.2f} s |"
            )
        print(
            f"\n| engine environment ({platform}) | size | from an empty uv cache "
            "| from uv's cache | imports, first start | imports, later |"
        )
        print("|---|---|---|---|---|---|")
        for engine, r in builds.items():
            print(
                f"| {engine} | {r['size_mb']:,.0f} MB | {r['empty_cache_s']:.1f} s "
                f"| {r['warm_cache_s']:.1f} s | {r['first_import_s']:.1f} s "
                f"| {r['import_s']:.1f} s |"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
