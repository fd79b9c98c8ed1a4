"""The one place that owns model lifecycles: launch, look-up, terminate, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.catalog import Catalog, EmbeddingFamily, LLMFamily, ModelSpec, ModelType
from inferd.engines import Engine, EngineConfig, choose_engine
from inferd.errors import Conflict, InvalidRequest, LaunchFailed, ModelUnavailable, NotFound
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.process import ModelProcess
from inferd.settings import Settings
from inferd.storage.resolve import resolve_model_path

log = logging.getLogger("inferd.manager")


@dataclass
class ModelInstance:
    uid: str
    request: LaunchRequest
    family: LLMFamily | EmbeddingFamily
    spec: ModelSpec
    quantization: str
    engine: type[Engine]
    status: str = "launching"
    error: str | None = None
    created: float = field(default_factory=time.time)
    process: ModelProcess | None = None
    task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        """The status, except that a ready model whose process has gone reads `exited`."""
        if self.status == "ready" and (self.process is None or not self.process.alive):
            return "exited"
        return self.status

    @property
    def model_type(self) -> str:
        return self.family.model_type

    @property
    def abilities(self) -> list[str]:
        return list(self.family.model_ability)

    def describe(self) -> dict[str, Any]:
        """Xinference's describe_model fields, plus what inferd knows about the process."""
        family = self.family
        info: dict[str, Any] = {
            "id": self.uid,
            "model_uid": self.uid,
            "model_name": family.model_name,
            "model_type": family.model_type,
            "model_engine": self.engine.name,
            "model_format": self.spec.model_format,
            "model_size_in_billions": self.spec.model_size_in_billions,
            "quantization": self.quantization,
            "model_ability": self.abilities,
            "model_lang": family.model_lang,
            "model_description": family.model_description,
            "model_family": family.model_name,
            "model_hub": next(iter(self.spec.model_hub)),
            "replica": 1,
            "status": self.state,
            "error": self.error,
            "created": int(self.created),
            "pid": self.process.pid if self.process else None,
            "load_seconds": self.process.load_seconds if self.process else None,
            "address": "local",
            "accelerators": [],
        }
        if isinstance(family, LLMFamily):
            info["context_length"] = family.context_length
        else:
            info["dimensions"] = family.dimensions
            info["max_tokens"] = family.max_tokens
        return info


class ModelManager:
    def __init__(self, settings: Settings, catalog: Catalog):
        self.settings = settings
        self.catalog = catalog
        self._models: dict[str, ModelInstance] = {}
        # Unix socket paths are limited to ~100 bytes, so they live in a short temp folder
        # rather than under INFERD_HOME, which may be deep.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="inferd-"))
        self._counter = itertools.count(1)

    def list(self) -> list[ModelInstance]:
        return list(self._models.values())

    def get(self, uid: str) -> ModelInstance:
        instance = self._models.get(uid)
        if instance is None:
            raise NotFound(f"no launched model with uid {uid!r}", param="model_uid")
        return instance

    def route(self, model: str) -> ModelInstance:
        """The ready instance a request's `model` names: its uid, or a name launched once."""
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
        if instance.state != "ready":
            raise ModelUnavailable(
                f"model {instance.uid!r} is {instance.state}, not ready", param="model"
            )
        return instance

    async def launch(self, request: LaunchRequest) -> ModelInstance:
        instance = self._plan(request)
        if instance.uid in self._models:
            raise Conflict(
                f"a model with uid {instance.uid!r} is already launched; terminate it first or "
                "pass another model_uid",
                param="model_uid",
            )
        self._models[instance.uid] = instance
        instance.task = asyncio.create_task(self._start(instance))
        try:
            await asyncio.shield(instance.task)
        except BaseException:
            if self._models.get(instance.uid) is instance:
                del self._models[instance.uid]
            if instance.task.cancelled():
                raise LaunchFailed(
                    f"the launch of {instance.uid!r} was cancelled: it was terminated while "
                    "loading",
                    code="launch_cancelled",
                ) from None
            raise
        return instance

    def _plan(self, request: LaunchRequest) -> ModelInstance:
        """Check everything that can be checked before a process starts."""
        if request.replica != 1:
            raise InvalidRequest("replica > 1 is not supported yet", param="replica")
        if request.gpu_idx is not None:
            raise InvalidRequest(
                "gpu_idx is not supported yet: GPU placement is to come", param="gpu_idx"
            )
        if request.n_gpu not in (None, "auto", 0, 1):
            raise InvalidRequest(
                "n_gpu must be 'auto', 0 (CPU) or 1: multi-GPU placement is not supported yet",
                param="n_gpu",
            )
        if request.peft_model_config:
            raise InvalidRequest("LoRA adapters are not supported yet", param="peft_model_config")
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
        spec, quantization, engine = _first_servable(family, candidates, request.model_engine)
        return ModelInstance(
            uid=request.model_uid or family.model_name,
            request=request,
            family=family,
            spec=spec,
            quantization=quantization,
            engine=engine,
        )

    async def _start(self, instance: ModelInstance) -> None:
        request = instance.request
        try:
            path = await asyncio.to_thread(
                resolve_model_path,
                instance.family,
                instance.spec,
                instance.quantization,
                self.settings.cache_dir,
                request.model_path,
            )
            options = request.engine_options
            if request.n_gpu == 0:
                options = {**instance.engine.cpu_options, **options}
            config = EngineConfig(
                model_uid=instance.uid,
                engine=instance.engine.name,
                model_name=instance.family.model_name,
                model_type=instance.family.model_type,
                model_format=instance.spec.model_format,
                quantization=instance.quantization,
                model_path=str(path),
                family=instance.family.model_dump(mode="json"),
                options=options,
            )
            instance.process = ModelProcess(
                config,
                socket_path=self._socket_dir / f"m{next(self._counter)}.sock",
                log_path=self.settings.logs_dir / f"{instance.uid}.log",
            )
            instance.status = "loading"
            log.info("launching %s (%s, %s)", instance.uid, instance.engine.name, path)
            await instance.process.start(self.settings.launch_timeout)
        except BaseException as exc:
            instance.status = "failed"
            instance.error = getattr(exc, "message", str(exc))
            if instance.process is not None:
                await instance.process.stop(self.settings.terminate_timeout)
            raise
        instance.status = "ready"
        log.info("%s is ready (pid %s)", instance.uid, instance.process.pid)

    async def terminate(self, uid: str) -> None:
        instance = self.get(uid)
        instance.status = "terminating"
        del self._models[uid]
        if instance.task is not None and not instance.task.done():
            instance.task.cancel()
            with contextlib.suppress(BaseException):
                await instance.task
        if instance.process is not None:
            await instance.process.stop(self.settings.terminate_timeout)
        log.info("terminated %s", uid)

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(self.terminate(uid) for uid in list(self._models)), return_exceptions=True
        )
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def _first_servable(
    family: LLMFamily | EmbeddingFamily,
    candidates: list[tuple[ModelSpec, str]],
    wanted_engine: str | None,
) -> tuple[ModelSpec, str, type[Engine]]:
    """The first spec an installed engine can serve; if none, the first spec's reason why not."""
    errors: list[InvalidRequest] = []
    for spec, quantization in candidates:
        try:
            return (
                spec,
                quantization,
                choose_engine(family.model_type, spec.model_format, wanted_engine),
            )
        except InvalidRequest as exc:
            errors.append(exc)
    raise errors[0]
