"""Engines: one module each, all behind `inferd.engines.base.Engine`.

Engine modules import their heavy libraries (torch, llama.cpp) only when a model loads, so the
server can consult this table without paying for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from inferd.engines.base import Engine, EngineConfig
from inferd.engines.diffusers import DiffusersEngine
from inferd.engines.llamacpp import LlamaCppEngine
from inferd.engines.piper import PiperEngine
from inferd.engines.sentence_transformers import SentenceTransformersEngine
from inferd.engines.transformers import TransformersEngine
from inferd.engines.vllm import VLLMEngine
from inferd.engines.whisper import WhisperEngine
from inferd.errors import InvalidRequest

ENGINES: dict[str, type[Engine]] = {
    engine.name: engine
    for engine in (
        VLLMEngine,
        LlamaCppEngine,
        SentenceTransformersEngine,
        TransformersEngine,
        WhisperEngine,
        PiperEngine,
        DiffusersEngine,
    )
}


def is_installed(engine: type[Engine]) -> bool:
    return engine.installed()


def vllm_supported(families: list[Any]) -> dict[str, list[str]]:
    """Names of the LLMs with weights vLLM can load, as Xinference's `vllm_models` lists them."""
    names: dict[str, list[str]] = {"generate": [], "chat": []}
    for family in families:
        if family.model_type != "LLM":
            continue
        if not any(spec.model_format in VLLMEngine.formats for spec in family.model_specs):
            continue
        for ability in ("generate", "chat"):
            if ability in family.model_ability:
                names[ability].append(family.model_name)
    return names


def engines_for(model_type: str, model_format: str) -> list[type[Engine]]:
    return [
        e for e in ENGINES.values() if model_type in e.model_types and model_format in e.formats
    ]


def choose_engine(
    model_type: str,
    model_format: str,
    wanted: str | None,
    installable: Callable[[type[Engine]], bool] = lambda engine: False,
) -> type[Engine]:
    """The engine named by the launch, or the first usable one that serves this format: one
    installed here, or one whose own environment can be built (`installable`)."""
    candidates = engines_for(model_type, model_format)
    if wanted is not None:
        engine = next((e for e in ENGINES.values() if e.name.lower() == wanted.lower()), None)
        if engine is None:
            raise InvalidRequest(
                f"unknown model_engine {wanted!r}; known engines: {', '.join(ENGINES)}",
                param="model_engine",
            )
        if engine not in candidates:
            raise InvalidRequest(
                f"engine {engine.name} cannot serve {model_type} models in {model_format} format",
                param="model_engine",
            )
        candidates = [engine]
    if not candidates:
        raise InvalidRequest(
            f"no engine serves {model_type} models in {model_format} format yet",
            param="model_format",
        )
    reasons = []
    for engine in candidates:
        reason = engine.unusable_here()
        if reason is None or (not engine.installed() and installable(engine)):
            return engine
        reasons.append(f"{engine.name}: {reason}")
    raise InvalidRequest(
        f"no engine that serves {model_type} models in {model_format} format can run on this "
        f"machine ({'; '.join(reasons)})",
        param="model_engine",
    )


__all__ = [
    "ENGINES",
    "Engine",
    "EngineConfig",
    "choose_engine",
    "engines_for",
    "is_installed",
    "vllm_supported",
]
