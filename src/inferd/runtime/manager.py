"""The one place that owns model lifecycles: launch, restore, route, idle unload, terminate.

Everything a restart must not lose goes through the state store; nothing on a request's path
touches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import TypeAdapter

from inferd.catalog import AnyFamily, Catalog, Family, ModelSpec, ModelType
from inferd.catalog.custom import parse_registration, verify_local_files
from inferd.engines import Engine, EngineConfig, choose_engine
from inferd.errors import (
    Conflict,
    InferdError,
    InvalidRequest,
    LaunchFailed,
    ModelUnavailable,
    NotFound,
)
from inferd.runtime.aborts import Aborts
from inferd.runtime.backends import LocalBackend, ProcessBackend
from inferd.runtime.engine_env import EngineEnvs
from inferd.runtime.gpus import has_nvidia_gpu
from inferd.runtime.instance import (
    FAILED,
    IDLE,
    LAUNCHING,
    LOADING,
    READY,
    RESTORING,
    TERMINATING,
    ModelInstance,
)
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.replica import Replica
from inferd.runtime.weights import Weights
from inferd.settings import Settings
from inferd.storage.paths import confined
from inferd.storage.resolve import (
    projector_file,
)
from inferd.storage.state import StateStore

log = logging.getLogger("inferd.manager")
_FOREVER = 10**9  # seconds: "no limit" where INFERD_REQUEST_TIMEOUT is 0
_family_adapter: TypeAdapter[AnyFamily] = TypeAdapter(Family)


class ModelManager:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        store: StateStore,
        backend: ProcessBackend | None = None,
    ):
        self.settings = settings
        # Where model processes run: here, or on a Ray cluster's nodes, placed by Ray.
        self.backend: ProcessBackend = backend or LocalBackend()
        self.catalog = catalog
        self.store = store
        self._models: dict[str, ModelInstance] = {}
        # Unix socket paths are limited to ~100 bytes, so they live in a short temp folder
        # rather than under INFERD_HOME, which may be deep.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="inferd-"))
        self._counter = itertools.count(1)
        self._idle_task: asyncio.Task[None] | None = None
        self.weights = Weights(settings, store)
        self.aborts = Aborts()
        self.engine_envs = EngineEnvs(settings, self.backend.on_cluster, self.backend.platform)

    # start-up and shut-down ----------------------------------------------------------

    async def start(self, restore: bool = True) -> None:
        """End orphans of a killed server, then bring back what was running when it stopped."""
        _end_orphans(self.store.take_processes())
        for raw in self.store.registrations():
            try:
                self.catalog.register(_family_adapter.validate_python(raw))
            except (InferdError, ValueError) as exc:
                log.error("skipping stored registration %s: %s", raw.get("model_name"), exc)
        if restore:
            self._restore()
        else:
            for row in self.store.launches():
                self.store.forget_launch(row["uid"])
        self._idle_task = asyncio.create_task(self._unload_idle())

    def _restore(self) -> None:
        for row in self.store.launches():
            uid = row["uid"]
            try:
                instance = self._plan(LaunchRequest.model_validate(row["request"]))
            except (InferdError, ValueError) as exc:
                log.error("cannot restore %s: %s", uid, getattr(exc, "message", exc))
                self.store.set_status(uid, FAILED, f"cannot restore: {exc}", wanted="failed")
                continue
            instance.expected_load_seconds = row["load_seconds"]
            self._models[uid] = instance
            if row["wanted"] == "running":
                instance.set_phase(RESTORING)
                instance.task = asyncio.create_task(self._bring_up(instance))
                instance.task.add_done_callback(_consume_exception)
            elif row["wanted"] == "idle":
                instance.set_phase(IDLE)
            else:
                instance.set_phase(FAILED)
                instance.error = row["error"]
            log.info("restoring %s (%s)", uid, instance.phase)

    async def shutdown(self) -> None:
        """Stop every model but remember them: the next `inferd serve` restores them."""
        if self._idle_task is not None:
            self._idle_task.cancel()
        for instance in self._models.values():
            if instance.task is not None and not instance.task.done():
                instance.task.cancel()
        await _stop_all(self._all_replicas(), grace=self.settings.terminate_timeout)
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _all_replicas(self) -> list[Replica]:
        return [r for m in self._models.values() for r in m.replicas]

    # registrations --------------------------------------------------------------------

    def register(
        self, model_type: ModelType, model: str | dict, persist: bool
    ) -> tuple[AnyFamily, list[str]]:
        """Add a custom model; with `persist` it survives restarts. The family registered, and
        the fields it ignored."""
        family, ignored = parse_registration(model_type, model, self.catalog)
        self.catalog.ensure_free(family)
        verify_local_files(family)
        self.catalog.register(family)
        if persist:
            self.store.save_registration(
                family.model_type, family.model_name, family.model_dump(mode="json")
            )
        return family, ignored

    def unregister(self, model_type: ModelType, model_name: str) -> None:
        users = [
            m.uid
            for m in self._models.values()
            if m.family.model_name == model_name and m.family.model_type == model_type.value
        ]
        if users:
            raise Conflict(
                f"{model_name!r} is in use by {', '.join(users)}; terminate first",
                param="model_name",
            )
        self.catalog.unregister(model_name, model_type)
        self.store.remove_registration(model_type.value, model_name)

    # look-ups -------------------------------------------------------------------------

    def list(self) -> list[ModelInstance]:
        return list(self._models.values())

    def find(self, uid: str) -> ModelInstance | None:
        return self._models.get(uid)

    def get(self, uid: str) -> ModelInstance:
        instance = self._models.get(uid)
        if instance is None:
            raise NotFound(f"no launched model with uid {uid!r}", param="model_uid")
        return instance

    def lookup(self, model: str) -> ModelInstance:
        """The instance a request's `model` names: its uid, or a model name launched once."""
        instance = self._models.get(model)
        if instance is None:
            same_name = [m for m in self._models.values() if m.family.model_name == model]
            if len(same_name) == 1:
                instance = same_name[0]
        if instance is None:
            running = ", ".join(sorted(self._models)) or "none"
            raise NotFound(
                f"the model {model!r} does not exist or is not launched (running: {running})",
                param="model",
            )
        return instance

    def try_acquire(self, instance: ModelInstance) -> Replica | None:
        """A free slot at once, if the model is ready and nobody waits; else None (and the
        caller waits in `acquire`)."""
        if instance.phase != READY:
            return None
        replica = instance.admission.admit_now()
        if replica is not None:
            instance.last_used = time.monotonic()
        return replica

    async def acquire(self, instance: ModelInstance, timeout: float | None = None) -> Replica:
        """A slot on a ready replica for one request: at once if one is free, else after
        waiting in the model's queue (429 when full), or through a restart or reload."""
        if timeout is None:
            timeout = self.settings.request_timeout or _FOREVER
        deadline = time.monotonic() + self.settings.request_wait
        while True:
            if instance.phase == READY and any(r.ready for r in instance.replicas):
                replica = instance.admission.admit_now()
                if replica is None:
                    replica = await instance.admission.wait(timeout)
                instance.last_used = time.monotonic()
                return replica
            state = instance.state
            if state == IDLE:
                self._wake(instance)
                deadline = max(deadline, time.monotonic() + self.settings.launch_timeout)
            elif state in (FAILED, TERMINATING) or self._models.get(instance.uid) is not instance:
                raise ModelUnavailable(
                    f"model {instance.uid!r} is {state}"
                    + (f": {instance.error_text()}" if state == FAILED else ""),
                    param="model",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelUnavailable(
                    f"model {instance.uid!r} is {state}; it did not become ready within "
                    f"{self.settings.request_wait:.0f}s",
                    param="model",
                )
            await instance.wait_change(remaining)

    def release(
        self, instance: ModelInstance, replica: Replica, held_for: float | None = None
    ) -> None:
        instance.admission.release(replica, held_for)
        instance.last_used = time.monotonic()

    # launch ---------------------------------------------------------------------------

    async def launch(self, request: LaunchRequest) -> ModelInstance:
        instance = self._plan(request)
        if instance.uid in self._models:
            raise Conflict(
                f"a model with uid {instance.uid!r} is already launched; terminate it first or "
                "pass another model_uid",
                param="model_uid",
            )
        self._models[instance.uid] = instance
        instance.expected_load_seconds = self.store.load_seconds(instance.uid)
        self.store.save_launch(instance.uid, request.persisted(), LAUNCHING)
        task = asyncio.create_task(self._bring_up(instance))
        instance.task = task
        if not request.wait_ready:
            task.add_done_callback(_consume_exception)
            return instance
        try:
            await asyncio.shield(task)
        except BaseException:
            if not task.done():
                # The caller went away (the server is stopping): the launch itself stays, and
                # a restart restores it.
                raise
            # The caller hears why; nothing of a launch that never came up is kept.
            if self._models.get(instance.uid) is instance:
                del self._models[instance.uid]
                self.store.forget_launch(instance.uid)
            if task.cancelled():
                raise LaunchFailed(
                    f"the launch of {instance.uid!r} was cancelled: it was terminated while "
                    "loading",
                    code="launch_cancelled",
                ) from None
            raise
        return instance

    def _plan(self, request: LaunchRequest) -> ModelInstance:
        """Check everything that can be checked before a process starts."""
        request.gpu_count()  # a malformed n_gpu or gpu_idx is refused before anything runs
        adapters = request.peft_model_config.lora_list if request.peft_model_config else []
        if request.model_path:
            confined(request.model_path, "model_path")
        for i, adapter in enumerate(adapters):
            where = f"peft_model_config.lora_list.{i}.local_path"
            if not confined(adapter.local_path, where).is_dir():
                raise InvalidRequest(
                    f"LoRA adapter {adapter.lora_name!r}: no folder at {adapter.local_path}",
                    param=where,
                )
        if len(request.loras) != len(adapters):
            raise InvalidRequest(
                "two LoRA adapters share a name", param="peft_model_config.lora_list"
            )
        unsupported = {
            "n_worker": request.n_worker != 1,
            "replica_config": bool(request.replica_config),
        }
        self.backend.check(request, self._models.values())
        for name, asked in unsupported.items():
            if asked:
                raise InvalidRequest(f"{name} is not supported by inferd yet", param=name)
        family = self.catalog.get(request.model_name, ModelType.parse(request.model_type))
        candidates = list(
            family.matching_specs(
                request.model_format, request.model_size_in_billions, request.quantization
            )
        )
        if not candidates:
            available = "; ".join(
                f"{s.model_format} {s.model_size_in_billions}B [{', '.join(s.quantizations)}]"
                for s in family.model_specs
            )
            raise InvalidRequest(
                f"{family.model_name} has no spec with format={request.model_format}, "
                f"size={request.model_size_in_billions}, quantization={request.quantization}; "
                f"it has: {available}",
                param="model_format",
            )
        if request.model_format is None and request.model_engine is None:
            candidates = _cpu_friendly_first(candidates, request.n_gpu)
        spec, quantization, engine = _first_servable(
            family,
            candidates,
            request.model_engine,
            lora=bool(request.loras),
            installable=self.engine_envs.installable(request),
        )
        return ModelInstance(
            uid=request.model_uid or family.model_name,
            request=request,
            family=family,
            spec=spec,
            quantization=quantization,
            engine=engine,
            max_queue=self.settings.max_queue,
            env_plan=self.engine_envs.plan(engine, request),
        )

    async def _bring_up(self, instance: ModelInstance) -> None:
        """Resolve the weights and start every replica; on failure the instance reads failed."""
        uid = instance.uid
        try:
            request = instance.request
            python = await self._engine_env(instance)
            instance.stage = "resolving"
            path = await self.weights.local_path(instance)
            options = request.engine_options
            if "mmproj" in options:
                raise InvalidRequest(
                    "name the vision projector with multimodal_projector (one of the spec's "
                    "multimodal_projectors, beside the weights), not as a path",
                    param="mmproj",
                )
            if request.n_gpu == 0:
                options = {**instance.engine.cpu_options, **options}
            projector = projector_file(instance.spec, path, request.multimodal_projector)
            if projector is not None:
                options = {**options, "mmproj": str(projector)}
            config = EngineConfig(
                model_uid=uid,
                engine=instance.engine.name,
                model_name=instance.family.model_name,
                model_type=instance.family.model_type,
                model_format=instance.spec.model_format,
                quantization=instance.quantization,
                model_path=str(path),
                family=instance.family.model_dump(mode="json"),
                options=options,
                env=request.envs or {},
                loras=request.loras,
                python=python,
            )
            instance.replicas = []
            for index in range(request.replica):  # one at a time: each sees where the last went
                instance.replicas.append(self._new_replica(instance, index, config))
            instance.set_phase(instance.phase, LOADING)
            self.store.set_status(uid, LOADING)
            log.info("loading %s on %s (%s)", uid, instance.engine.name, path)
            started = time.monotonic()
            results = await asyncio.gather(
                *(r.start() for r in instance.replicas), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except BaseException as exc:
            await _stop_all(instance.replicas, grace=0)
            cancelled = isinstance(exc, asyncio.CancelledError)
            message = "cancelled" if cancelled else getattr(exc, "message", None)
            instance.error = message or f"{type(exc).__name__}: {exc}"
            instance.set_phase(FAILED)
            if not cancelled:
                # A cancelled launch was terminated (its record is gone) or the server is
                # stopping (its record stays, to be restored).
                self.store.set_status(uid, FAILED, instance.error, wanted="failed")
            instance.notify()
            raise
        load_seconds = time.monotonic() - started
        instance.error = None
        instance.set_phase(READY)
        instance.last_used = time.monotonic()
        self.store.set_status(uid, READY, wanted="running", load_seconds=load_seconds)
        instance.notify()
        instance.admission.dispatch()
        log.info(
            "%s is ready in %.1fs (pids %s)", uid, load_seconds, [r.pid for r in instance.replicas]
        )

    async def _engine_env(self, instance: ModelInstance) -> str | None:
        """The interpreter of the environment the model runs in, built first if need be;
        None: the server's, or one its node builds (on a cluster)."""
        plan = instance.env_plan
        if plan is None or self.backend.on_cluster:
            return None
        builder = self.engine_envs.builder
        found = builder.find(plan)
        if found is None:
            instance.stage = "installing"
            instance.notify()

            def say(line: str) -> None:
                instance.install_note = line
                log.info("%s: %s", plan.name, line)

            found = await builder.ensure(plan, say)
            instance.install_note = None
        return found.python

    def _new_replica(self, instance: ModelInstance, index: int, config: EngineConfig) -> Replica:
        config, new_process = self.backend.process_for(instance, config, self._models.values())
        return Replica(
            index,
            config,
            socket_path=self._socket_dir / f"m{next(self._counter)}.sock",
            log_path=self.log_path(instance.uid, index),
            launch_timeout=self.settings.launch_timeout,
            on_change=lambda r, status, msg: self._replica_changed(instance, r, status, msg),
            request_limit=instance.request.request_limits,
            new_process=new_process,
        )

    # scaling --------------------------------------------------------------------------

    async def add_replicas(self, uid: str, count: int) -> tuple[int, ...]:
        """Start `count` more processes of a ready model; they take requests once loaded."""
        instance = self.get(uid)
        if instance.state != READY or not instance.replicas:
            raise Conflict(
                f"model {uid!r} is {instance.state}; replicas can be added once it is ready",
                param="model_uid",
            )
        first = max(r.index for r in instance.replicas) + 1
        config = instance.replicas[0].config
        added = [self._new_replica(instance, first + i, config) for i in range(count)]
        results = await asyncio.gather(*(r.start() for r in added), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors or self._models.get(uid) is not instance:
            await _stop_all(added, grace=0)
            if errors:
                raise errors[0]
            raise NotFound(f"model {uid!r} was terminated meanwhile", param="model_uid")
        instance.replicas.extend(added)
        instance.request.replica = len(instance.replicas)
        self.store.update_request(uid, instance.request.persisted())
        instance.notify()
        instance.admission.dispatch()
        return tuple(r.index for r in added)

    async def remove_replica(self, uid: str, index: int) -> int:
        """Stop one replica (its requests finish first); the number left."""
        instance = self.get(uid)
        replica = next((r for r in instance.replicas if r.index == index), None)
        if replica is None:
            have = ", ".join(str(r.index) for r in instance.replicas) or "none"
            raise NotFound(
                f"model {uid!r} has no replica {index} (it has: {have})", param="replica_id"
            )
        if len(instance.replicas) == 1:
            raise Conflict(
                f"replica {index} is the last of {uid!r}; terminate the model instead",
                param="replica_id",
            )
        instance.replicas.remove(replica)  # no new requests go to it
        instance.request.replica = len(instance.replicas)
        self.store.update_request(uid, instance.request.persisted())
        await replica.stop(grace=self.settings.terminate_timeout)
        instance.notify()
        return len(instance.replicas)

    def _replica_changed(
        self, instance: ModelInstance, replica: Replica, status: str, message: str | None
    ) -> None:
        if status == "spawned" and message:
            self.store.add_process(int(message), instance.uid, replica.index)
            return
        if status == "exited":
            if message:
                self.store.remove_process(int(message))
            return
        if instance.phase == READY:
            self.store.add_event(instance.uid, f"replica {replica.index} {status}", message)
            if instance.state == FAILED:
                self.store.set_status(instance.uid, FAILED, replica.error, wanted="failed")
                instance.admission.fail_all(
                    ModelUnavailable(f"model {instance.uid!r} failed", param="model")
                )
        instance.notify()
        if status == "ready":
            instance.admission.dispatch()

    def log_path(self, uid: str, replica: int = 0) -> Path:
        name = f"{uid}.log" if replica == 0 else f"{uid}.r{replica}.log"
        return self.settings.logs_dir / name

    # idle unload ------------------------------------------------------------------------

    async def _unload_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for instance in list(self._models.values()):
                timeout = instance.request.idle_timeout
                if (
                    timeout
                    and instance.state == READY
                    and instance.inflight == 0
                    and now - instance.last_used > timeout
                ):
                    log.info("%s idle for %.0fs: unloading", instance.uid, timeout)
                    instance.set_phase(IDLE)
                    self.store.set_status(instance.uid, IDLE, wanted="idle")
                    replicas = instance.replicas
                    instance.task = asyncio.create_task(_stop_all(replicas, grace=0))

    def _wake(self, instance: ModelInstance) -> None:
        """Reload an idle model for the request that needs it."""
        if instance.phase != IDLE:
            return
        log.info("%s requested while idle: reloading", instance.uid)
        instance.set_phase(LOADING)
        unloading = instance.task

        async def reload() -> None:
            if unloading is not None:
                with contextlib.suppress(BaseException):
                    await unloading
            await self._bring_up(instance)

        instance.task = asyncio.create_task(reload())
        instance.task.add_done_callback(_consume_exception)
        instance.notify()

    # terminate --------------------------------------------------------------------------

    async def terminate(self, uid: str) -> None:
        """Stop a model for good: in-flight requests get the grace period to finish."""
        instance = self.get(uid)
        instance.set_phase(TERMINATING)
        instance.notify()
        instance.admission.fail_all(
            ModelUnavailable(f"model {uid!r} is being terminated", param="model")
        )
        self.store.forget_launch(uid)
        if instance.task is not None and not instance.task.done():
            instance.task.cancel()
            with contextlib.suppress(BaseException):
                await instance.task
        await _stop_all(instance.replicas, grace=self.settings.terminate_timeout)
        if self._models.get(uid) is instance:
            del self._models[uid]
        self.store.add_event(uid, "terminated")
        log.info("terminated %s", uid)


def _cpu_friendly_first(
    candidates: list[tuple[ModelSpec, str]], n_gpu: int | str | None
) -> list[tuple[ModelSpec, str]]:
    """Where the launch names no format and there is no GPU to use, quantized GGUF on llama.cpp
    before full-precision weights: on a CPU it answers several times faster in a fraction of
    the memory. With a GPU the catalogue's own order stands."""
    if n_gpu not in (0, "0") and has_nvidia_gpu():
        return candidates
    return sorted(candidates, key=lambda c: c[0].model_format != "ggufv2")


def _first_servable(
    family: AnyFamily,
    candidates: list[tuple[ModelSpec, str]],
    wanted_engine: str | None,
    lora: bool = False,
    installable: Callable[[type[Engine]], bool] = lambda engine: False,
) -> tuple[ModelSpec, str, type[Engine]]:
    """The first spec an installed engine can serve (with LoRA adapters, if asked); if none,
    the first spec's reason why not."""
    errors: list[InvalidRequest] = []
    for spec, quantization in candidates:
        try:
            engine = choose_engine(family.model_type, spec.model_format, wanted_engine, installable)
        except InvalidRequest as exc:
            errors.append(exc)
            continue
        if lora and not engine.supports_lora:
            errors.append(
                InvalidRequest(
                    f"LoRA adapters are served by the vLLM engine; {engine.name} cannot serve "
                    f"them (launch a safetensors spec with model_engine='vllm')",
                    param="peft_model_config",
                )
            )
            continue
        return spec, quantization, engine
    raise errors[0]


async def _stop_all(replicas: list[Replica], grace: float) -> None:
    await asyncio.gather(*(r.stop(grace=grace) for r in replicas), return_exceptions=True)


def _consume_exception(task: asyncio.Task[None]) -> None:
    """Background launches report through the instance's status, not the task."""
    if not task.cancelled():
        task.exception()


def _end_orphans(pids: list[int]) -> None:
    """Model processes a killed server left behind hold memory and ports: end them."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone already (they exit when their server dies), or not Linux
        if b"inferd.runtime.worker" in cmdline:
            log.warning("ending model process %d left by an earlier server", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
