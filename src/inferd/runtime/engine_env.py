"""Which environment a model's processes run in: the server's own, or its engine's (built on
first use by inferd.envs here, or by each node through Ray's runtime_env on a cluster), as the
server's INFERD_ENGINE_ENV and the launch's fields decide."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from inferd.engines import Engine
from inferd.envs import SPECS, EnvBuilder, EnvPlan
from inferd.envs.config import engine_envs
from inferd.errors import InvalidRequest
from inferd.runtime.gpus import has_nvidia_gpu
from inferd.runtime.launch import LaunchRequest
from inferd.settings import Settings


def current_platform() -> str:
    """Which builds engine environments take on this machine."""
    return "cuda" if has_nvidia_gpu() else "cpu"


class EngineEnvs:
    def __init__(self, settings: Settings, on_cluster: bool, platform: Callable[[], str]):
        """`platform`: which builds (cpu, cuda) fit where the model processes run."""
        self.mode = settings.engine_env
        self.builder: EnvBuilder = engine_envs(settings)
        self._on_cluster = on_cluster
        chosen = settings.engine_platform
        self._platform = platform if chosen == "auto" else lambda: chosen

    def platform(self) -> str:
        """Which builds (cpu, cuda) this server's engine environments take."""
        return self._platform()

    def own_env(self, engine: type[Engine]) -> str | None:
        """The environment a launch of `engine` with no environment fields runs in, if it is the
        engine's own (built on first use); None: the server's, or none at all."""
        spec = SPECS.get(engine.name)
        if spec is None or self.mode == "current" or (self.mode == "auto" and engine.installed()):
            return None
        versions = spec.locked_versions(self._platform())
        return f"{engine.name}-{versions[0]}" if versions else None

    def installable(self, request: LaunchRequest) -> Callable[[type[Engine]], bool]:
        """Whether an engine not installed beside the server can serve `request` from its own
        environment."""

        def check(engine: type[Engine]) -> bool:
            if self.mode == "current" or request.enable_virtual_env is False:
                return False
            spec = SPECS.get(engine.name)
            if spec is None:
                return False
            return request.engine_version is not None or bool(
                spec.locked_versions(self._platform())
            )

        return check

    def plan(self, engine: type[Engine], request: LaunchRequest) -> EnvPlan | None:
        """The environment `request`'s processes run in; None: the server's own."""
        asked = _asked(request)
        if asked is not None and self.mode == "current":
            raise InvalidRequest(
                f"{asked} asks for an environment of the engine's own, and this server runs "
                "every engine in the server's environment (INFERD_ENGINE_ENV=current)",
                param=asked,
            )
        if request.enable_virtual_env is False:
            return None
        # Installed beside the server, an engine runs there unless asked otherwise, or unless
        # "managed" has each engine with a recipe run in its own environment.
        stays = self.mode != "managed" or engine.name not in SPECS
        if asked is None and engine.installed() and stays:
            return None
        plan = self.builder.plan(
            engine.name,
            self._platform(),
            request.engine_version,
            request.virtual_env_packages,
            find_links=request.virtual_env_find_links,
            param=asked or "model_engine",
        )
        if self._on_cluster and plan.lock is None:
            # Each node installs the environment from a list of pinned packages; resolving
            # more around the tested set needs its constraint files there too.
            why = "more packages" if plan.packages else f"{plan.name}, which has no tested lock"
            raise InvalidRequest(
                f"on a Ray cluster, engine environments are built from inferd's tested locks; "
                f"this launch asks for {why}. Install what it needs on every node and launch "
                "with enable_virtual_env false, or pick a locked engine_version (`inferd "
                "engine list` names them)",
                param=asked or "model_engine",
            )
        return plan

    @staticmethod
    def users(models: Iterable[tuple[str, EnvPlan | None]]) -> dict[str, list[str]]:
        """The model uids running in each engine environment, by its name."""
        found: dict[str, list[str]] = {}
        for uid, plan in models:
            if plan is not None:
                found.setdefault(plan.name, []).append(uid)
        return found


def _asked(request: LaunchRequest) -> str | None:
    """The launch field that asks for an environment of the engine's own, if one does."""
    if request.engine_version is not None:
        return "engine_version"
    if request.virtual_env_packages:
        return "virtual_env_packages"
    if request.enable_virtual_env:
        return "enable_virtual_env"
    return None
