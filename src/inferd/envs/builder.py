"""Building an engine's environment with uv, all or nothing.

An environment is built in a hidden folder beside where it goes and moved into place only once
everything is installed and the model process's imports work there, so a failed or interrupted
build leaves nothing a later launch could mistake for an environment, and the next one starts
clean. inferd itself is not installed into it: a `.pth` file shows the model process the very
inferd package the server runs, so the two never differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import inferd
from inferd.envs.specs import SPECS, EnvSpec, worker_requirements
from inferd.envs.store import EnvInfo, read_env, remove_env, tree_bytes, write_marker
from inferd.errors import EnvBuildFailed, InvalidRequest

_TAIL = 15  # lines of the installer's output a failure quotes


@dataclass(frozen=True)
class EnvPlan:
    """Which environment a launch needs, before it exists."""

    spec: EnvSpec
    version: str
    platform: str
    packages: tuple[str, ...] = ()  # more packages beside the engine's
    find_links: tuple[str, ...] = ()  # more wheel folders or pages, for this environment

    @property
    def name(self) -> str:
        name = f"{self.spec.engine}-{self.version}"
        if self.packages:
            digest = hashlib.sha256("\n".join(sorted(self.packages)).encode()).hexdigest()
            name += f"+{digest[:8]}"
        return name

    @property
    def lock(self) -> Path | None:
        return None if self.packages else self.spec.lock(self.version, self.platform)


@dataclass
class EnvBuilder:
    root: Path
    find_links: list[str] = field(default_factory=list)
    index_url: str | None = None  # "none": wheel folders only
    offline: bool = False
    torch_index: str | None = None  # PyTorch's CPU index, for a CPU torch no folder holds
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def plan(
        self,
        engine: str,
        platform: str,
        version: str | None = None,
        packages: list[str] | None = None,
        find_links: list[str] | None = None,
        param: str = "engine_version",
    ) -> EnvPlan:
        """The environment `engine` runs in: the newest locked version unless one is named."""
        spec = SPECS.get(engine)
        if spec is None:
            ready = ", ".join(sorted(SPECS))
            raise InvalidRequest(
                f"engine {engine} has no environment of its own yet (those that have: {ready}); "
                "install it beside the server instead",
                param=param,
            )
        if version is None:
            locked = spec.locked_versions(platform)
            if not locked:
                raise InvalidRequest(
                    f"no tested version of {engine} is known for {platform} machines on Python "
                    f"{sys.version_info.major}.{sys.version_info.minor}; name one with "
                    "engine_version",
                    param=param,
                )
            version = locked[0]
        return EnvPlan(spec, version, platform, tuple(packages or ()), tuple(find_links or ()))

    def find(self, plan: EnvPlan) -> EnvInfo | None:
        found = read_env(self.root / plan.name)
        if found is not None:
            _point_at_inferd(Path(found.path))
        return found

    async def ensure(self, plan: EnvPlan, say: Callable[[str], None]) -> EnvInfo:
        """The environment of `plan`, built first if it is not there; `say` hears progress."""
        lock = self._locks.setdefault(plan.name, asyncio.Lock())
        async with lock:  # two launches needing one environment build it once
            found = self.find(plan)
            if found is not None:
                return found
            return await self._build(plan, say)

    async def _build(self, plan: EnvPlan, say: Callable[[str], None]) -> EnvInfo:
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".{plan.name}.*"):  # left by a server that died building
            shutil.rmtree(stale, ignore_errors=True)
        building = self.root / f".{plan.name}.{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        package = plan.spec.package_on(plan.platform)
        try:
            async with _growth(building, say, f"{package} {plan.version}") as downloads:
                say(f"creating the {plan.name} environment")
                await self._uv(["venv", "--quiet", "--python", sys.executable, str(building)], say)
                python = building / "bin" / "python"
                say(f"installing {package} {plan.version} and what it needs")
                sources = self._sources(plan, building)

                def hear(line: str) -> None:
                    downloads.hear(line)
                    say(line)

                await self._uv(["pip", "install", "--python", str(python), *sources], hear)
                _link_inferd(building)
                say("checking the model process starts there")
                await self._check(python, plan)
            info = EnvInfo(
                name=plan.name,
                engine=plan.spec.engine,
                version=plan.version,
                platform=plan.platform,
                path=str(building),
                locked=plan.lock is not None,
                packages=list(plan.packages),
                created=time.time(),
            )
            write_marker(info)
            final = self.root / plan.name
            remove_env(final)  # a folder without a marker: never finished
            building.rename(final)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        found = await asyncio.to_thread(read_env, final, True)  # its size, off the loop
        size = f", {_megabytes(found.size_bytes)}" if found and found.size_bytes else ""
        say(f"built {plan.name} in {time.monotonic() - started:.0f}s{size}")
        assert found is not None
        return found

    def _sources(self, plan: EnvPlan, building: Path) -> list[str]:
        """What to install, and where from."""
        args: list[str] = []
        lock = plan.lock
        if lock is not None:
            args += ["--requirements", str(lock), "--no-deps"]  # the lock is the whole set
        else:
            args += [*plan.spec.requirements(plan.version, plan.platform), *worker_requirements()]
            args += list(plan.packages)
            tested = plan.spec.lock(plan.version, plan.platform)
            if tested is not None:  # more packages fit around the tested set, or say why not
                args += ["--constraint", str(tested)]
            overrides = plan.spec.overrides(plan.platform)
            if overrides:
                path = building / "inferd-overrides.txt"
                path.write_text("\n".join(overrides) + "\n")
                args += ["--override", str(path)]
        return args + self.origins(plan)

    def origins(self, plan: EnvPlan) -> list[str]:
        """uv's options saying where `plan`'s packages come from: wheel folders, the index,
        PyTorch's for a CPU torch no folder holds."""
        args: list[str] = []
        for links in [*self.find_links, *plan.find_links]:
            args += ["--find-links", links]
        if self.index_url == "none":
            args.append("--no-index")
        elif self.index_url:
            args += ["--index-url", self.index_url]
        if self.offline:
            args.append("--offline")
        elif self.index_url != "none" and self.torch_index and self._torch_elsewhere(plan):
            # The lock pins torch's CPU build, which only PyTorch's index has; every version is
            # pinned, so taking each from whichever index has it is safe.
            args += ["--index", self.torch_index]
            args += ["--index-strategy", "unsafe-best-match"]
        return args

    def _torch_elsewhere(self, plan: EnvPlan) -> bool:
        """Whether `plan` needs torch's CPU build and no wheel folder given here holds it (a
        link that is no local folder is taken to hold it: it cannot be looked into)."""
        lock = plan.spec.lock(plan.version, plan.platform)
        wanted = lock.read_text() if lock is not None else ""
        wanted += "\n".join(plan.spec.requirements(plan.version, plan.platform))
        if "torch==" not in wanted or "+cpu" not in wanted:
            return False
        for link in [*self.find_links, *plan.find_links]:
            folder = Path(link)
            if not folder.is_dir() or any(folder.glob("torch-*+cpu-*.whl")):
                return False
        return True

    async def _check(self, python: Path, plan: EnvPlan) -> None:
        """The model process's own module imports there, and the engine's package is found."""
        module = plan.spec.module
        code = (
            "import importlib.util, inferd.runtime.worker\n"
            f"assert importlib.util.find_spec({module!r}), 'no {module} in the environment'\n"
        )
        await _run([str(python), "-c", code], lambda line: None, what="the check")

    async def _uv(self, args: list[str], say: Callable[[str], None]) -> None:
        from uv import find_uv_bin

        await _run([find_uv_bin(), *args], say, what="uv")


class _Downloads:
    """What uv has said it downloads (`Downloading torch (502.2MiB)`, then `Downloaded torch`):
    a build's first minutes on a fresh machine, when nothing is in place yet."""

    _STARTED = re.compile(r"^\s*Downloading (\S+) \(([\d.]+)(KiB|MiB|GiB)\)")
    _DONE = re.compile(r"^\s*Downloaded (\S+)")
    _UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self._done: set[str] = set()

    def hear(self, line: str) -> None:
        if started := self._STARTED.match(line):
            self._sizes[started[1]] = int(float(started[2]) * self._UNITS[started[3]])
        elif done := self._DONE.match(line):
            self._done.add(done[1])

    def report(self) -> str:
        """How far the announced downloads are ("; downloaded 1.90 of 3.10 GB (14 of 23
        files)"), or nothing before uv announces one."""
        if not self._sizes:
            return ""
        done = sum(size for name, size in self._sizes.items() if name in self._done)
        total = sum(self._sizes.values())
        files = sum(name in self._done for name in self._sizes)
        return (
            f"; downloaded {_megabytes(done)} of {_megabytes(total)} "
            f"({files} of {len(self._sizes)} files)"
        )


@contextlib.asynccontextmanager
async def _growth(folder: Path, say: Callable[[str], None], what: str) -> AsyncIterator[_Downloads]:
    """While the body runs, says every second how much of the environment is in place and how
    much uv has downloaded (the body hands uv's lines to the `_Downloads` it is given): uv
    prints nothing between resolving and finishing, which for vLLM or torch can be minutes."""
    downloads = _Downloads()

    async def tick() -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(_TICK)
            placed = await asyncio.to_thread(tree_bytes, folder)
            elapsed = time.monotonic() - started
            say(f"{what}: {_megabytes(placed)} in place, {elapsed:.0f}s{downloads.report()}")

    ticking = asyncio.create_task(tick())
    try:
        yield downloads
    finally:
        ticking.cancel()  # not waited for: a build being cancelled must not wait on it


_TICK = 1.0  # seconds between reports of a build's progress


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


async def _run(command: list[str], say: Callable[[str], None], what: str) -> None:
    """Run `command`, handing each line it prints to `say`; EnvBuildFailed with its last lines
    if it fails."""
    env = {**os.environ, "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    tail: deque[str] = deque(maxlen=_TAIL)
    assert process.stdout is not None
    try:
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail.append(line)
                say(line)
        code = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if code != 0:
        raise EnvBuildFailed(
            f"building the engine's environment failed ({what} exited with {code}):\n"
            + "\n".join(tail),
            param="model_engine",
        )


def _link_inferd(env: Path) -> None:
    """Show the environment's Python this server's inferd package, and nothing else of the
    server's environment."""
    link_dir = env / "inferd-link"
    link_dir.mkdir()
    (link_dir / "inferd").symlink_to(_inferd_package())
    (site,) = env.glob("lib/python*/site-packages")
    # Relative to site-packages, so it holds once the folder is moved into place.
    (site / "_inferd.pth").write_text(f"{os.path.relpath(link_dir, site)}\n")


def _inferd_package() -> Path:
    return Path(inferd.__file__).resolve().parent


def _point_at_inferd(env: Path) -> None:
    """Point an environment built by another install of inferd (upgraded, moved) at this one,
    so the model process never runs other code than the server."""
    link = env / "inferd-link" / "inferd"
    here = _inferd_package()
    with contextlib.suppress(OSError):
        if Path(os.readlink(link)) == here:
            return
    fresh = link.with_name(f".inferd.{uuid.uuid4().hex[:8]}")
    fresh.symlink_to(here)
    os.replace(fresh, link)  # atomic: a starting model process sees one link or the other
