"""Engine environments on a Ray cluster: the node a model host is placed on builds the engine's
environment itself, through Ray's own `runtime_env` (its uv plugin), from the same tested lock
and the same wheel folders and indexes as the server would use (inferd.envs); the host actor
and the model process it starts run in it. Ray keeps a built environment for the next host
that asks for the same one."""

from __future__ import annotations

from typing import Any

from inferd.envs import EnvBuilder, EnvPlan
from inferd.runtime.process import OWN_ENVIRONMENT

# How long a node may take to build an environment (vLLM's is gigabytes from an empty cache).
SETUP_TIMEOUT = 1800.0


def runtime_env(builder: EnvBuilder, plan: EnvPlan) -> dict[str, Any]:
    """Ray's runtime_env for a host running in `plan`'s environment. Ray's uv plugin starts from
    a copy of the node's own Python environment (so inferd and Ray are there) and installs the
    lock's pinned packages over it."""
    lock = plan.lock
    if lock is None:  # EngineEnvs.plan refuses these on a cluster
        raise ValueError(f"{plan.name} has no lock to install on a node")
    packages = [
        line.strip()
        for line in lock.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return {
        "uv": {
            "packages": packages,
            # The lock is the whole set; uv's cache stays on (Ray's default turns it off).
            "uv_pip_install_options": ["--no-deps", *builder.origins(plan)],
        },
        # Its model processes keep the bytecode they compile (see runtime.process.worker_env).
        "env_vars": {"UV_NO_PROGRESS": "1", OWN_ENVIRONMENT: "1"},
        "config": {"setup_timeout_seconds": int(SETUP_TIMEOUT)},
    }
