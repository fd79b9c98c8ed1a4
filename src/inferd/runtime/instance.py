"""A launched model as the server knows it: its catalogue entry, its replicas and its phase."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from inferd.catalog import (
    AnyFamily,
    AudioFamily,
    EmbeddingFamily,
    LLMFamily,
    ModelSpec,
    RerankFamily,
)
from inferd.engines import Engine
from inferd.envs import EnvPlan
from inferd.errors import UnsupportedOperation
from inferd.runtime.admission import Admission
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.replica import Replica
from inferd.storage.download import DownloadProgress

# Phases the manager moves an instance through; once `ready`, what clients see is derived
# from its replicas (ready, restarting, failed).
LAUNCHING = "launching"
RESTORING = "restoring"
LOADING = "loading"
READY = "ready"
IDLE = "idle"
TERMINATING = "terminating"
FAILED = "failed"
RESTARTING = "restarting"


@dataclass
class ModelInstance:
    uid: str
    request: LaunchRequest
    family: AnyFamily
    spec: ModelSpec
    quantization: str
    engine: type[Engine]
    phase: str = LAUNCHING
    stage: str = "queued"
    error: str | None = None
    created: float = field(default_factory=time.time)
    phase_since: float = field(default_factory=time.monotonic)
    expected_load_seconds: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    replicas: list[Replica] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    download: DownloadProgress | None = None
    env_plan: EnvPlan | None = None  # the engine's own environment; None: the server's
    install_note: str | None = None  # the last line of its build, while it is built
    max_queue: int = 512
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.admission = Admission(self.uid, self.max_queue, lambda: self.replicas)

    @property
    def model_type(self) -> str:
        return self.family.model_type

    @property
    def abilities(self) -> list[str]:
        return list(self.family.model_ability)

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas)

    @property
    def state(self) -> str:
        if self.phase == LAUNCHING and self.stage in (LOADING, "downloading", "installing"):
            return self.stage
        if self.phase != READY:
            return self.phase
        if any(r.ready for r in self.replicas):
            return READY
        # A replica still marked ready is one whose process just went quiet (it died, or its
        # node stopped answering) and whose supervisor is about to say so: it is recovering.
        if any(r.status in (RESTARTING, LOADING, READY) for r in self.replicas):
            return RESTARTING
        return FAILED

    def require(self, ability: str, what: str, param: str = "model") -> None:
        """Refuse (400) a request for something this model cannot do, naming `what` it asked."""
        if ability in self.abilities:
            return
        hint = (
            "; the catalogue or a registration lists 'tools' where a model's chat template "
            "supports tool calls"
            if ability == "tools"
            else ""
        )
        raise UnsupportedOperation(
            f"model {self.uid!r} is a {self.model_type} model and cannot serve {what} "
            f"(its abilities: {', '.join(self.abilities)}{hint})",
            param=param,
        )

    def notify(self) -> None:
        """Wake every request waiting for this model to change state."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def set_phase(self, phase: str, stage: str | None = None) -> None:
        self.phase = phase
        self.stage = stage or phase
        self.phase_since = time.monotonic()

    def progress(self) -> dict[str, Any]:
        """0..1 with a stage name. Loading has no engine-side counter, so its share grows with
        the time the last load of this model took."""
        state = self.state
        if state in (READY, IDLE):
            return {"progress": 1.0, "stage": state}
        # A download, when there is one, takes the first 80% of the bar.
        load_from = 0.8 if self.download is not None else 0.1
        if self.stage == "downloading" and self.download is not None:
            share = self.download.done / self.download.total if self.download.total else 0.0
            return {
                "progress": round(0.8 * share, 3),
                "stage": "downloading",
                "download": self.download.as_dict(),
            }
        preparing = next((r.preparing for r in self.replicas if r.preparing), None)
        if preparing is not None and self.env_plan is not None:  # its node builds it (Ray)
            return {
                "progress": 0.05,
                "stage": "installing",
                "install": {"environment": self.env_plan.name, "message": preparing},
            }
        if state == LOADING or self.stage == LOADING:
            expected = self.expected_load_seconds or 10.0
            elapsed = time.monotonic() - self.phase_since
            share = min(elapsed / expected, 1.0)
            return {"progress": round(load_from + (0.95 - load_from) * share, 3), "stage": LOADING}
        if self.stage == "installing" and self.env_plan is not None:
            return {
                "progress": 0.02,
                "stage": "installing",
                "install": {"environment": self.env_plan.name, "message": self.install_note},
            }
        fractions = {LAUNCHING: 0.0, RESTORING: 0.0, "resolving": 0.05, RESTARTING: 0.5}
        return {"progress": fractions.get(self.stage, 0.0), "stage": self.stage}

    def error_text(self) -> str | None:
        if self.error:
            return self.error
        failed = [r.error for r in self.replicas if r.status == FAILED and r.error]
        return failed[0] if failed else None

    def context_window(self) -> int | None:
        """How many tokens one request may hold here, where the server checks it."""
        if not isinstance(self.family, LLMFamily):
            return None
        return self.engine.context_window(self.family.context_length, self.request.engine_options)

    def describe(self) -> dict[str, Any]:
        """Xinference's describe_model fields, plus what inferd knows about the processes."""
        family = self.family
        replicas = [
            {
                "replica": r.index,
                "status": r.status,
                "pid": r.pid,
                "inflight": r.inflight,
                "slots": r.slots,
                "served": r.served,
                "restarts": r.restarts,
                "started": r.started,
                "gpus": r.gpus,
                "memory_bytes": r.memory_bytes(),
                "node": r.node or "local",
                "node_id": r.node_id,
            }
            for r in self.replicas
        ]
        info: dict[str, Any] = {
            "id": self.uid,
            "model_uid": self.uid,
            "model_name": family.model_name,
            "model_type": family.model_type,
            "model_engine": self.engine.name,
            # The environment its processes run in: the engine's own, or the server's.
            "engine_env": self.env_plan.name if self.env_plan is not None else "current",
            "model_format": self.spec.model_format,
            "model_size_in_billions": self.spec.model_size_in_billions,
            "quantization": self.quantization,
            "model_ability": self.abilities,
            "model_lang": family.model_lang,
            "model_description": family.model_description,
            "model_family": getattr(family, "model_family", None) or family.model_name,
            "model_hub": next(iter(self.spec.model_hub), "local"),
            "replica": self.request.replica,
            "replicas": replicas,
            "queued": self.admission.queued,
            "status": self.state,
            "error": self.error_text(),
            "created": int(self.created),
            "pid": replicas[0]["pid"] if replicas else None,
            "idle_timeout": self.request.idle_timeout,
            "launch": self.request.persisted(),  # what launches it again, options and all
            # Xinference's field: the worker it runs on.
            "address": (self.replicas[0].node if self.replicas else None) or "local",
            # Xinference's field: the GPUs the model holds, as strings.
            "accelerators": sorted({str(g) for r in self.replicas for g in r.gpus}),
        }
        if isinstance(family, LLMFamily):
            info["context_length"] = family.context_length
        elif isinstance(family, EmbeddingFamily):
            info["dimensions"] = family.dimensions
            info["max_tokens"] = family.max_tokens
        elif isinstance(family, RerankFamily):
            info["max_tokens"] = family.max_tokens
            info["method"] = family.method
        elif isinstance(family, AudioFamily):
            info["multilingual"] = family.multilingual
        else:
            info["default_size"] = family.default_size
        return info
