"""The server's view of a Ray cluster: joining it, its nodes, and model hosts placed on them."""

from __future__ import annotations

import logging
import secrets
from typing import Any, NamedTuple

from inferd.engines.base import EngineConfig
from inferd.errors import InvalidRequest

log = logging.getLogger("inferd.cluster")

# Ray's own name for the resources every node has; the rest are custom ones a node was started
# with (`ray start --resources`), which a launch can ask for by name.
_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


class Need(NamedTuple):
    """What one model process asks of its node, besides a CPU: GPUs, and memory (Ray's
    logical figure, in bytes) for a model held in RAM."""

    gpus: int
    memory: int

    def __str__(self) -> str:
        gib = f", {self.memory / 2**30:.1f} GiB of memory" if self.memory else ""
        return f"1 CPU, {self.gpus} GPU(s){gib}"


class RayCluster:
    def __init__(self, address: str, copy_weights: bool = False):
        self.address = address
        # Model processes on other nodes listen on the network: only the server knows this.
        self.token = secrets.token_urlsafe(32)
        self.copy_weights = copy_weights
        self._host_class: Any = None
        self._weights: Any = None
        self._node_id = ""

    def connect(self) -> None:
        """Join the cluster as a driver (blocking: call it from a thread)."""
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "--ray-address needs Ray: pip install 'inferd[ray]' on every node"
            ) from None
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from inferd.cluster.host import ModelHost
        from inferd.cluster.weights import WeightSource

        ray.init(
            address=self.address,
            namespace="inferd",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        # Ray restarts no actor unless asked: a host whose node died is replaced by the
        # replica's supervisor, which picks a node again and keeps the count of crashes.
        self._host_class = ray.remote(ModelHost)
        # Nodes that cannot see the server's disk copy the weights from it through Ray.
        self._node_id = ray.get_runtime_context().get_node_id()
        self._weights = (
            ray.remote(WeightSource)
            .options(
                num_cpus=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(self._node_id, soft=False),
            )
            .remote()
        )
        log.info(
            "joined the Ray cluster at %s: %d nodes", self.address, len(self.nodes(usage=False))
        )

    def disconnect(self) -> None:
        import ray

        ray.shutdown()

    def host(
        self,
        config: EngineConfig,
        need: Need,
        pinned: str | None,
        environment: dict[str, Any] | None = None,
    ) -> Any:
        """A new model host actor for `config`, placed by Ray: on a node with what it needs
        free, the `pinned` one if named (see node_at), spread from the other hosts otherwise;
        in the Ray runtime_env `environment`, if given (its node builds it first)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy: Any = "SPREAD"
        if pinned is not None:
            node = self.node_at(pinned)["id"]
            strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        options: dict[str, Any] = {"runtime_env": environment} if environment else {}
        return self._host_class.options(
            num_cpus=1,
            num_gpus=need.gpus,
            memory=need.memory,
            scheduling_strategy=strategy,
            **options,
        ).remote(
            config.model_dump_json(), self.token, self._weights, self._node_id, self.copy_weights
        )

    def node_at(self, name: str) -> dict[str, Any]:
        """The live node `name` names (Xinference's worker_ip): its address, or its Ray node id
        as `inferd nodes` shows it (enough of it to be unique), for several nodes on one
        address; a 400 if there is none, or more than one."""
        live = [n for n in self.nodes(usage=False) if n["alive"]]
        matches = [n for n in live if n["address"] == name] or [
            n for n in live if len(name) >= 6 and n["id"].startswith(name)
        ]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise InvalidRequest(
                f"{len(matches)} nodes have the address {name}; name one by its id "
                "(`inferd nodes`)",
                param="worker_ip",
            )
        raise InvalidRequest(
            f"no live node of the cluster is {name} (an address or a node id)", param="worker_ip"
        )

    def fits(self, need: Need) -> bool:
        """Whether any live node could ever hold a host with this need."""
        return any(
            n["alive"]
            and n["cpu_total"] >= 1
            and n["gpu_total"] >= need.gpus
            and n["memory_total"] >= need.memory
            for n in self.nodes(usage=False)
        )

    def gpu_total(self) -> int:
        return int(sum(n["gpu_total"] for n in self.nodes(usage=False) if n["alive"]))

    def nodes(self, usage: bool = True) -> list[dict[str, Any]]:
        """Every node Ray knows, with its resources, whether it is up, and, with `usage`, what
        is free of them: a second query to Ray, which the checks before a launch (totals
        only) skip; without it the free figures read 0."""
        import ray

        available = _available_by_node() if usage else {}
        nodes = []
        for node in ray.nodes():
            total = node.get("Resources", {})
            free = available.get(node["NodeID"], {})
            nodes.append(
                {
                    "id": node["NodeID"],
                    "address": node["NodeManagerAddress"],
                    "hostname": node.get("NodeManagerHostname"),
                    "alive": bool(node["Alive"]),
                    "cpu_total": total.get("CPU", 0.0),
                    "cpu_available": free.get("CPU", 0.0),
                    "gpu_total": total.get("GPU", 0.0),
                    "gpu_available": free.get("GPU", 0.0),
                    "memory_total": int(total.get("memory", 0)),
                    "memory_available": int(free.get("memory", 0)),
                    "resources": {k: v for k, v in total.items() if _custom(k)},
                }
            )
        return nodes


def _custom(resource: str) -> bool:
    return resource not in _BUILTIN and not resource.startswith("node:")


def _available_by_node() -> dict[str, dict[str, float]]:
    # Ray offers free resources per node only through its state module; without it the
    # listing still has totals.
    try:
        from ray._private.state import available_resources_per_node
    except ImportError:
        return {}
    try:
        return available_resources_per_node()
    except Exception:  # a figure for display, not worth failing a listing
        return {}
