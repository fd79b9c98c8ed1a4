"""Model processes on a Ray cluster's nodes: the process backend `inferd serve --ray-address`
gives the manager (runtime.backends says what a backend does)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from inferd.cluster.engine_envs import runtime_env
from inferd.cluster.ray_cluster import Need, RayCluster
from inferd.cluster.remote import RemoteModelProcess
from inferd.engines import EngineConfig
from inferd.envs import EnvBuilder
from inferd.errors import InvalidRequest
from inferd.runtime.gpus import weights_bytes
from inferd.runtime.instance import ModelInstance
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.process import ModelProcess
from inferd.runtime.replica import ProcessFactory

_PLATFORM_TTL = 30.0  # seconds


class RayBackend:
    """Ray places each process on a node with the GPUs it needs (and sets which it sees); a
    restarted one may land elsewhere. A model whose engine runs in an environment of its own
    gets it built on its node by Ray (engine_envs)."""

    on_cluster = True

    def __init__(self, cluster: RayCluster, builder: EnvBuilder):
        self.cluster = cluster
        self.builder = builder
        self._platform = (0.0, "cpu")

    def platform(self) -> str:
        # One lock for the cluster: its nodes are taken to be alike. Asked once per engine
        # when engines are listed: Ray is asked again only after a while.
        asked, found = self._platform
        if time.monotonic() - asked > _PLATFORM_TTL:
            found = "cuda" if self.cluster.gpu_total() > 0 else "cpu"
            self._platform = (time.monotonic(), found)
        return found

    def check(self, request: LaunchRequest, running: Iterable[ModelInstance]) -> None:
        self._check_named_gpus(request, running)
        gpus = request.gpu_count()
        if gpus and not self.cluster.fits(Need(gpus, 0)):
            raise InvalidRequest(
                f"no node of the cluster has {gpus} GPU(s); `inferd nodes` lists what each has",
                param="n_gpu",
            )

    def _check_named_gpus(self, request: LaunchRequest, running: Iterable[ModelInstance]) -> None:
        """gpu_idx names GPUs of the node worker_ip names, which must have them free of this
        server's other models."""
        gpu_idx = request.gpu_list()
        if gpu_idx is None:
            return
        node = self.cluster.node_at(request.worker_ip) if request.worker_ip is not None else None
        if node is None:
            raise InvalidRequest(
                "on a cluster, gpu_idx names GPUs of the node given by worker_ip; give both, "
                "or n_gpu alone",
                param="gpu_idx",
            )
        missing = [i for i in gpu_idx if i >= node["gpu_total"]]
        if missing:
            raise InvalidRequest(
                f"node {node['address']} ({node['id'][:8]}) has {node['gpu_total']:g} GPU(s); "
                f"there is no GPU {missing[0]}",
                param="gpu_idx",
            )
        for model in running:
            for replica in model.replicas:
                held = set(replica.gpus) & set(gpu_idx)
                if replica.node_id == node["id"] and replica.process is not None and held:
                    raise InvalidRequest(
                        f"GPU {min(held)} of node {node['address']} is held by "
                        f"{model.uid} (replica {replica.index})",
                        param="gpu_idx",
                    )

    def process_for(
        self, instance: ModelInstance, config: EngineConfig, running: Iterable[ModelInstance]
    ) -> tuple[EngineConfig, ProcessFactory]:
        request = instance.request
        count = request.gpu_count()
        if not instance.engine.uses_gpu:
            count = 0
        elif count is None:  # "auto": one GPU where the cluster has any
            count = 1 if self.cluster.gpu_total() > 0 else 0
        gpu_idx = request.gpu_list()
        cluster = self.cluster
        plan = instance.env_plan
        environment = runtime_env(self.builder, plan) if plan is not None else None

        def new_process(config: EngineConfig, socket_path: Path, log_path: Path) -> ModelProcess:
            if gpu_idx is not None:
                # The GPUs named, not those Ray would pick: Ray only counts them.
                visible = ",".join(map(str, gpu_idx))
                env = {"CUDA_VISIBLE_DEVICES": visible, **config.env}
                config = config.model_copy(update={"gpus": gpu_idx, "env": env})
            elif count == 0:
                # Kept off the node's GPUs, which Ray gives to others.
                env = {"CUDA_VISIBLE_DEVICES": "", **config.env}
                config = config.model_copy(update={"env": env})
            # On the CPU, the weights are held in the node's memory.
            memory = 0 if count else weights_bytes(config.model_path)
            need = Need(gpus=count, memory=memory)
            return RemoteModelProcess(
                config, socket_path, log_path, cluster, need, request.worker_ip, environment
            )

        return config, new_process
