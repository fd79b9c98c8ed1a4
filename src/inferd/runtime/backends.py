"""Where a model's processes run, behind one small interface the manager uses without knowing
which: this machine (`LocalBackend`, GPUs placed here by free memory), or a Ray cluster's nodes
(`inferd.cluster.backend.RayBackend`, placed by Ray). Which environment a process runs in is
decided apart (engine_env); a backend starts it with the interpreter its config names."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from inferd.engines import EngineConfig
from inferd.errors import InvalidRequest
from inferd.runtime.engine_env import current_platform
from inferd.runtime.gpus import Placement, has_nvidia_gpu, weights_bytes
from inferd.runtime.instance import ModelInstance
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.process import ModelProcess
from inferd.runtime.replica import ProcessFactory

log = logging.getLogger("inferd.placement")


class ProcessBackend(Protocol):
    # Whether processes run on other machines, which build engine environments themselves.
    on_cluster: bool

    def platform(self) -> str:
        """Which builds of engines (cpu, cuda) fit where this backend's processes run."""

    def check(self, request: LaunchRequest, running: Iterable[ModelInstance]) -> None:
        """Refuse, before anything starts, a launch this backend cannot place (a 400 naming
        the field)."""

    def process_for(
        self, instance: ModelInstance, config: EngineConfig, running: Iterable[ModelInstance]
    ) -> tuple[EngineConfig, ProcessFactory]:
        """One more process of `instance`: its config with its GPUs placed, and what starts
        it. `running` are the server's other models, whose GPUs are taken."""


class LocalBackend:
    """Processes on this machine, each shown only the GPUs placed for it."""

    on_cluster = False

    def platform(self) -> str:
        return current_platform()

    def check(self, request: LaunchRequest, running: Iterable[ModelInstance]) -> None:
        if request.worker_ip is not None:
            raise InvalidRequest(
                "worker_ip names a node of a cluster, and this server runs alone; start it with "
                "--ray-address to spread models over machines",
                param="worker_ip",
            )

    def process_for(
        self, instance: ModelInstance, config: EngineConfig, running: Iterable[ModelInstance]
    ) -> tuple[EngineConfig, ProcessFactory]:
        return _placed(instance, config, running), ModelProcess


def _placed(
    instance: ModelInstance, config: EngineConfig, running: Iterable[ModelInstance]
) -> EngineConfig:
    """The config of one more process of `instance`, with the GPUs placed for it and the
    environment that shows it only those; a 400 if it cannot fit."""
    request = instance.request
    engine = instance.engine
    env = dict(config.env)
    if "CUDA_VISIBLE_DEVICES" in (request.envs or {}):
        return config.model_copy(update={"gpus": []})  # the user placed it themselves
    count = request.gpu_count()
    count_param = "n_gpu"
    # On a machine without GPUs the same options mean CPU workers (vLLM's CPU build).
    asked = engine.gpus_asked(config.options) if count != 0 and has_nvidia_gpu() else None
    if asked is not None:
        wanted, count_param = asked
        if count is not None and count != wanted:
            raise InvalidRequest(
                f"{count_param} asks for {wanted} GPU(s) but the launch places it on "
                f"{count} (n_gpu/gpu_idx); give one of them, or the same number",
                param=count_param,
            )
        count = wanted
    if count == 0 or not engine.uses_gpu:
        if has_nvidia_gpu():
            env["CUDA_VISIBLE_DEVICES"] = ""  # kept off the GPUs others were placed on
        return config.model_copy(update={"gpus": [], "env": env})
    if count is None:  # "auto": one GPU where there are any, else the CPU
        if not has_nvidia_gpu():
            return config.model_copy(update={"gpus": []})
        count = 1
    need = engine.gpu_need(config.options, weights_bytes(config.model_path), count)
    held = {
        f"{m.uid}/{r.index}": r.config.gpus for m in running for r in m.replicas if r.config.gpus
    }
    gpus = Placement(held).place(need, request.gpu_list(), count_param=count_param)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA's numbering then matches NVML's
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
    log.info("placing %s on GPU %s (%s)", instance.uid, gpus, need.what)
    return config.model_copy(update={"gpus": gpus, "env": env})
