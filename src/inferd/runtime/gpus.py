"""The machine's NVIDIA GPUs, and which of them each model process holds.

NVML (`nvidia-ml-py`) reports each GPU's name and memory without creating a CUDA context, so
the server can ask before every launch. A model process sees only the GPUs placed for it
(`CUDA_VISIBLE_DEVICES`, numbered in PCI order like NVML), and a launch that cannot fit is
refused before anything loads, saying what would fit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from inferd.errors import InvalidRequest

log = logging.getLogger("inferd.gpus")
GiB = 1 << 30
# Weights are not all a model needs: activations, CUDA's own context and a first KV cache.
_WORKSPACE = 1.2
_CONTEXT_BYTES = GiB // 2


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total: int
    free: int
    uuid: str = ""

    def describe(self) -> str:
        return f"GPU {self.index} ({self.name}, {_gib(self.free)} free of {_gib(self.total)})"


def has_nvidia_gpu() -> bool:
    # The driver's device node: cheap enough for every launch, and needs no Python package.
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def discover() -> list[GPU]:
    """The GPUs this server may use, as NVML sees them now; [] without a driver or NVML.

    `CUDA_VISIBLE_DEVICES` in the server's environment (indices or UUIDs) narrows the set, as
    it would for any CUDA program."""
    if not has_nvidia_gpu():
        return []
    try:
        import pynvml
    except ImportError:
        log.warning("an NVIDIA driver is present but nvidia-ml-py is not installed")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.warning("NVML did not start: %s", exc)
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(
                GPU(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    total=int(memory.total),
                    free=int(memory.free),
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return _visible(found, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _visible(found: list[GPU], setting: str | None) -> list[GPU]:
    if setting is None:
        return found
    wanted = [item.strip() for item in setting.split(",") if item.strip()]
    return [g for g in found if str(g.index) in wanted or g.uuid in wanted]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _gib(size: float) -> str:
    return f"{size / GiB:.1f} GiB"


def weights_bytes(path: str | Path) -> int:
    """The size of a model's weight files: what its GPU memory starts from."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    suffixes = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx"}
    return sum(p.stat().st_size for p in root.rglob("*") if p.suffix in suffixes and p.is_file())


@dataclass(frozen=True)
class Need:
    """What one model process asks of each GPU it is placed on."""

    count: int  # how many GPUs
    per_gpu: int | None  # bytes it takes on each, when known exactly
    fraction: float | None  # or the share of each GPU's total it takes (vLLM's way)
    what: str  # how the figure came about, for messages

    def bytes_on(self, gpu: GPU) -> int:
        if self.fraction is not None:
            return int(gpu.total * self.fraction)
        return self.per_gpu or 0


def estimate(weights: int, count: int) -> Need:
    """The weights split over `count` GPUs, with room to run."""
    per_gpu = int(weights / count * _WORKSPACE) + _CONTEXT_BYTES
    return Need(count, per_gpu, None, f"about {_gib(per_gpu)} each ({_gib(weights)} of weights)")


class Placement:
    """Decides where the next model process goes, given which processes hold which GPUs."""

    def __init__(self, held: dict[str, list[int]]):
        self._held = held  # holder ("uid/replica") -> GPU indices

    def holders(self, index: int) -> list[str]:
        return [holder for holder, gpus in self._held.items() if index in gpus]

    def place(
        self,
        need: Need,
        gpu_idx: list[int] | None,
        gpus: list[GPU] | None = None,
        count_param: str = "n_gpu",
    ) -> list[int]:
        """GPUs for the next process, or a 400 saying why none fit and what would.

        `count_param` is the launch field that set how many GPUs (`n_gpu`, or an engine's own
        option such as vLLM's `tensor_parallel_size`), named when there are too few."""
        gpus = discover() if gpus is None else gpus
        if not gpus:
            raise InvalidRequest(
                f"this machine has no NVIDIA GPU inferd can use, and the launch asked for "
                f"{need.count}; launch with n_gpu=0 to run on the CPU",
                param="gpu_idx" if gpu_idx else count_param,
            )
        by_index = {g.index: g for g in gpus}
        if gpu_idx is not None:
            unknown = [i for i in gpu_idx if i not in by_index]
            if unknown:
                raise InvalidRequest(
                    f"no GPU {unknown[0]} here; this machine has "
                    + ", ".join(g.describe() for g in gpus),
                    param="gpu_idx",
                )
            candidates = [by_index[i] for i in gpu_idx]
        else:
            if need.count > len(gpus):
                raise InvalidRequest(
                    f"{count_param}={need.count} asks for {need.count} GPUs and this machine "
                    f"has {len(gpus)}: " + ", ".join(g.describe() for g in gpus),
                    param=count_param,
                )
            # Free GPUs first (nobody of ours on them), then the emptiest.
            candidates = sorted(gpus, key=lambda g: (bool(self.holders(g.index)), -g.free))
        # Named GPUs number exactly `need.count` (the manager checks), so all of them must fit.
        chosen = [g for g in candidates if need.bytes_on(g) <= g.free][: need.count]
        if len(chosen) < need.count:
            raise InvalidRequest(self._refusal(need, candidates), param=self._param(need, gpu_idx))
        return [g.index for g in chosen]

    def _refusal(self, need: Need, candidates: list[GPU]) -> str:
        lines = [f"the model does not fit: it needs {need.what} on {need.count} GPU(s)"]
        for gpu in candidates:
            held = self.holders(gpu.index)
            owner = f", held by {', '.join(held)}" if held else ""
            lines.append(
                f"{gpu.describe()}{owner}: needs {_gib(need.bytes_on(gpu))}"
                + (" - fits" if need.bytes_on(gpu) <= gpu.free else "")
            )
        if need.fraction is not None:
            best = max(candidates, key=lambda g: g.free)
            share = int(best.free / best.total * 100) / 100
            if share > 0.05:
                lines.append(
                    f"gpu_memory_utilization={share:.2f} would fit on GPU {best.index}, if the "
                    "weights and a KV cache fit in that share"
                )
        lines.append("terminate a model holding a GPU, or launch with n_gpu=0 to use the CPU")
        return "; ".join(lines)

    @staticmethod
    def _param(need: Need, gpu_idx: list[int] | None) -> str:
        if need.fraction is not None:
            return "gpu_memory_utilization"
        return "gpu_idx" if gpu_idx is not None else "n_gpu"
