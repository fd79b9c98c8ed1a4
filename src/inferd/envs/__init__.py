"""Engine environments: each engine's packages in a virtual environment of its own.

The server needs no engine. A launch whose engine is not in the server's environment (or that
pins an engine version) runs its model process under the interpreter of an environment built
with uv from a lock shipped here (`locks/`), under INFERD_HOME/envs/ENGINE-VERSION, shared by
every model on that engine. Engines that never share an environment never fight over versions.
"""

from inferd.envs.builder import EnvBuilder, EnvPlan
from inferd.envs.specs import SPECS, EnvSpec
from inferd.envs.store import EnvInfo, list_envs

__all__ = [
    "SPECS",
    "EnvBuilder",
    "EnvInfo",
    "EnvPlan",
    "EnvSpec",
    "list_envs",
]
