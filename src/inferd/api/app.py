"""Builds the FastAPI application and owns the server's start-up and shut-down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from fastapi import FastAPI

from inferd import __version__, ui
from inferd.api import (
    audio,
    engine_envs,
    images,
    keys,
    management,
    metrics,
    ollama,
    openai_routes,
    rerank,
    system,
    unsupported,
)
from inferd.api.anthropic import routes as anthropic_routes
from inferd.api.checks import install_checks
from inferd.api.fronts.control import FrontControl
from inferd.api.fronts.forward import client_from_front
from inferd.api.fronts.processes import FrontProcesses, FrontsPlan
from inferd.api.responses import routes as responses_routes
from inferd.api.wrong_keys import WrongKeys
from inferd.catalog import get_catalog
from inferd.errors import InferdError
from inferd.runtime.backends import ProcessBackend
from inferd.runtime.heap import freeze_startup_heap
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.manager import ModelManager
from inferd.settings import Settings
from inferd.storage.responses import ResponseStore
from inferd.storage.state import StateStore

if TYPE_CHECKING:
    from inferd.cluster.ray_cluster import RayCluster

log = logging.getLogger("inferd.server")


def create_app(
    settings: Settings,
    launch: Sequence[str] = (),
    restore: bool = True,
    fronts: FrontsPlan | None = None,
) -> FastAPI:
    """The server's app; `launch` names catalogue models to start once it is up, `restore`
    brings back the models that were running when the last server stopped, `fronts` (from
    `--api-processes`) says which front processes to run beside it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.home.mkdir(parents=True, exist_ok=True)
        store = StateStore(settings.state_db)
        cluster = await _join_cluster(settings)
        manager = ModelManager(settings, get_catalog(), store, _backend(cluster, settings))
        app.state.manager = manager
        app.state.cluster = cluster
        app.state.responses = ResponseStore(settings.responses_db)
        app.state.started = time.time()
        # Restored models are listed at once (status `restoring`) and load in the background,
        # like --launch ones: the API answers from the first moment.
        await manager.start(restore=restore)
        watched = metrics.watch(manager)
        _record_address(settings)
        control = processes = None
        if fronts is not None:
            control = FrontControl(manager, fronts.control, wrong_keys)
            await control.start()
            processes = FrontProcesses(fronts, settings)
            processes.start()
        freeze_startup_heap()  # the relay of every stream pauses for each full collection
        startup = asyncio.create_task(_launch_all(manager, launch))
        try:
            yield
        finally:
            startup.cancel()
            with contextlib.suppress(BaseException):
                await startup
            if processes is not None and control is not None:
                await processes.stop()
                await control.close()
            await manager.shutdown()
            metrics.unwatch(watched)
            store.close()
            app.state.responses.close()
            if cluster is not None:
                cluster.disconnect()

    app = FastAPI(
        title="inferd",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    wrong_keys = WrongKeys()  # the server's own, and with API processes theirs too
    install_checks(app, settings, wrong_keys)
    if fronts is not None:
        app.add_middleware(client_from_front)
    app.include_router(openai_routes.router)
    app.include_router(rerank.router)
    app.include_router(audio.router)
    app.include_router(images.router)
    app.include_router(unsupported.router)
    app.include_router(engine_envs.router)
    app.include_router(management.router)
    app.include_router(system.router)
    app.include_router(ollama.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(metrics.router)
    app.include_router(keys.router)
    ui.mount(app)
    return app


def _backend(cluster: RayCluster | None, settings: Settings) -> ProcessBackend | None:
    """Where model processes run: the cluster's nodes when the server joined one."""
    if cluster is None:
        return None
    from inferd.cluster.backend import RayBackend
    from inferd.envs.config import engine_envs

    return RayBackend(cluster, engine_envs(settings))


async def _join_cluster(settings: Settings) -> RayCluster | None:
    if not settings.ray_address:
        return None
    from inferd.cluster.ray_cluster import RayCluster

    cluster = RayCluster(settings.ray_address, copy_weights=settings.cluster_weights == "copy")
    try:
        await asyncio.to_thread(cluster.connect)
    except Exception as exc:
        log.error("cannot join the Ray cluster at %s: %s", settings.ray_address, exc)
        raise
    return cluster


async def _launch_all(manager: ModelManager, names: Sequence[str]) -> None:
    async def launch_one(name: str) -> None:
        started = time.monotonic()
        if any(m.uid == name for m in manager.list()):
            return  # restored from the last run already
        try:
            family = manager.catalog.get(name)
            request = LaunchRequest(model_name=name, model_type=family.model_type)
            instance = await manager.launch(request)
        except InferdError as exc:
            log.error("could not launch %s: %s", name, exc.message)
            return
        log.info("%s ready in %.1fs", instance.uid, time.monotonic() - started)

    await asyncio.gather(*(launch_one(name) for name in names))


def _record_address(settings: Settings) -> None:
    """Lets `inferd` commands on this machine find this server without -e."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    record = {"endpoint": f"http://{host}:{settings.port}", "pid": os.getpid()}
    settings.server_record.write_text(json.dumps(record))
