"""Custom registrations: a user's model definition, in Xinference's JSON, made a catalogue family.

Xinference's custom-model files carry fields inferd has no use for (prompt styles, virtualenv
settings, ...); those are dropped and named back to the caller rather than refused, so files
written for Xinference register unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from inferd.catalog.registry import Catalog
from inferd.catalog.schema import (
    AnyFamily,
    AudioFamily,
    EmbeddingFamily,
    Family,
    ImageFamily,
    LLMFamily,
    ModelType,
    RerankFamily,
)
from inferd.errors import InvalidRequest, NotFound
from inferd.storage.resolve import check_local_weights

_family = TypeAdapter(Family)
_FAMILY_FIELDS = {
    ModelType.LLM: set(LLMFamily.model_fields),
    ModelType.EMBEDDING: set(EmbeddingFamily.model_fields),
    ModelType.RERANK: set(RerankFamily.model_fields),
    ModelType.AUDIO: set(AudioFamily.model_fields),
    ModelType.IMAGE: set(ImageFamily.model_fields),
}
_SPEC_FIELDS = {
    "model_format",
    "model_size_in_billions",
    "quantizations",
    "model_hub",
    "model_file_name_template",
    "model_uri",
}


def parse_registration(
    model_type: ModelType, model: str | dict[str, Any], catalog: Catalog
) -> tuple[AnyFamily, list[str]]:
    """The family a registration defines, and the names of the fields it ignored."""
    if isinstance(model, str):
        try:
            model = json.loads(model)
        except ValueError as exc:
            raise InvalidRequest(f"model is not valid JSON: {exc}", param="model") from exc
    if not isinstance(model, dict):
        raise InvalidRequest("model must be a JSON object", param="model")
    data = dict(model)
    if "language" in data and "model_lang" not in data:
        data["model_lang"] = data.pop("language")
    flat = (ModelType.EMBEDDING, ModelType.RERANK, ModelType.AUDIO, ModelType.IMAGE)
    if model_type in flat and "model_specs" not in data:
        # Xinference's embedding, rerank and audio files are flat: one spec's fields at the top.
        uri = str(data.get("model_uri") or "")
        default_format = "pytorch"
        if model_type == ModelType.AUDIO:
            default_format = "onnx" if uri.endswith(".onnx") else "ct2"
        data["model_specs"] = [
            {
                "model_format": data.pop("model_format", default_format),
                "model_size_in_billions": data.pop("model_size_in_billions", 0),
                "model_id": data.pop("model_id", None),
                "model_uri": data.pop("model_uri", None),
                "model_hub": data.pop("model_hub", None),
            }
        ]
    if model_type == ModelType.RERANK:
        # Xinference's "type" of reranker; "normal" ones are cross-encoders.
        kind = data.pop("type", "normal")
        if kind not in ("normal", "cross-encoder", "bi-encoder"):
            raise InvalidRequest(
                f"rerank type {kind!r} is not supported: inferd serves cross-encoders "
                "('normal') and bi-encoders",
                param="type",
            )
        data.setdefault("method", "bi-encoder" if kind == "bi-encoder" else "cross-encoder")
        data.setdefault("max_tokens", 512)
    parent = _parent(data, model_type, catalog)
    data.setdefault("model_description", f"custom {model_type.value} model")
    data.setdefault("model_lang", ["en"])
    if model_type == ModelType.LLM:
        if parent is not None:
            for inherited in ("chat_template", "stop", "stop_token_ids", "context_length"):
                if data.get(inherited) is None and getattr(parent, inherited, None):
                    data[inherited] = getattr(parent, inherited)
        data.setdefault(
            "model_ability", ["generate", "chat"] if data.get("chat_template") else ["generate"]
        )
        data.setdefault("context_length", 2048)

    ignored = sorted(k for k in data if k not in _FAMILY_FIELDS[model_type])
    family_data = {k: v for k, v in data.items() if k in _FAMILY_FIELDS[model_type]}
    family_data["model_type"] = model_type.value
    family_data["is_builtin"] = False
    specs = []
    for i, raw in enumerate(family_data.get("model_specs") or []):
        spec = {k: v for k, v in raw.items() if k in _SPEC_FIELDS and v is not None}
        ignored += sorted(
            f"model_specs[{i}].{k}" for k in raw if k not in _SPEC_FIELDS and k != "model_id"
        )
        hub = raw.get("model_hub")
        if raw.get("model_id") and not isinstance(hub, dict):
            # Xinference names one hub per spec ("model_hub": "modelscope"); inferd's catalogue
            # form, a dict of repo ids per hub, is taken as it is.
            spec["model_hub"] = {hub or "huggingface": raw["model_id"]}
        specs.append(spec)
    family_data["model_specs"] = specs

    try:
        family = _family.validate_python(family_data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][1:]  # the first step is the union's tag, the model type
        where = ".".join(str(p) for p in loc) or "the top level"
        raise InvalidRequest(
            f"invalid model definition at {where}: {first['msg']}", param="model"
        ) from exc
    return family, ignored


def verify_local_files(family: AnyFamily) -> None:
    """Each spec's local weights exist and are of its format; a 400 naming the spec if not."""
    for i, checked in enumerate(family.model_specs):
        if checked.local_path:
            check_local_weights(
                Path(checked.local_path).expanduser(),
                checked.model_format,
                param=f"model_specs[{i}].model_uri",
            )
        elif not checked.model_hub:
            raise InvalidRequest(f"model_specs[{i}] needs model_uri or model_id", param="model")


def _parent(data: dict[str, Any], model_type: ModelType, catalog: Catalog) -> AnyFamily | None:
    """The built-in family a custom model names in `model_family`, for its template and stops."""
    name = data.get("model_family")
    if not name:
        return None
    try:
        return catalog.get(str(name), model_type)
    except NotFound:
        raise InvalidRequest(
            f"model_family {name!r} is not a known {model_type.value} model", param="model"
        ) from None
