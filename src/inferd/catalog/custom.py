"""Custom registrations: a user's model definition, in Xinference's JSON, made a catalogue family.

What Xinference 4.1 accepts is accepted here, in its v1 form (`quantizations` per spec) and its
v2 form (`quantization`, nulls for unset fields, flat image and audio files): a custom LLM may name
any `model_family`, built-in or its own; a `chat_template` may be Jinja or the name of a built-in
family whose template it takes. What Xinference refuses is refused, with the reason in our words:
`tools` or `vision` without a family (or template) that can drive them, a chat model with no
template anywhere. Fields inferd has no use for are dropped and named back to the caller, so
files written for Xinference register unchanged.
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
from inferd.storage.chat_template import weights_carry_a_template
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
    "multimodal_projectors",
}
_HUBS = {"huggingface", "modelscope"}
# Xinference's rerank "type": "unknown" lets it detect the kind, which for the folders inferd
# serves is a cross-encoder; its LLM-based rerankers have no engine here.
_RERANK_TYPES = {
    "normal": "cross-encoder",
    "unknown": "cross-encoder",
    "cross-encoder": "cross-encoder",
    "bi-encoder": "bi-encoder",
}


def parse_registration(
    model_type: ModelType, model: str | dict[str, Any], catalog: Catalog
) -> tuple[AnyFamily, list[str]]:
    """The family a registration defines, and the names of the fields it ignored."""
    data = _as_object(model)
    version = data.pop("version", 2)
    if version not in (1, 2, "1", "2"):
        raise InvalidRequest(
            f"version {version!r} is not a registration version: write 1 or 2 "
            "(Xinference's two forms; both are read)",
            param="model.version",
        )
    data.pop("is_builtin", None)  # a registration is never built in, whatever the file says
    data = {k: v for k, v in data.items() if not _is_empty(v)}
    if "language" in data and "model_lang" not in data:
        language = data.pop("language")
        data["model_lang"] = [language] if isinstance(language, str) else language
    if "model_specs" not in data:
        # Xinference's image and audio files (and older embedding and rerank ones) are flat:
        # one spec's fields at the top.
        data["model_specs"] = [_flat_spec(model_type, data)]

    if model_type == ModelType.LLM:
        _llm(data, catalog)
    elif model_type == ModelType.RERANK:
        _rerank(data)
    elif model_type == ModelType.AUDIO:
        _audio(data)
    data.setdefault("model_description", f"custom {model_type.value} model")
    data.setdefault("model_lang", ["en"])

    fields = _FAMILY_FIELDS[model_type]
    ignored = sorted(k for k in data if k not in fields)
    family_data = {k: v for k, v in data.items() if k in fields}
    family_data["model_type"] = model_type.value
    family_data["is_builtin"] = False
    specs, spec_ignored = _specs(family_data.get("model_specs"), model_type)
    family_data["model_specs"] = specs
    ignored += spec_ignored

    try:
        family = _family.validate_python(family_data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"][1:]  # the first step is the union's tag, the model type
        where = ".".join(str(p) for p in loc) or "the top level"
        raise InvalidRequest(
            f"invalid model definition at {where}: {first['msg']}", param=f"model.{where}"
        ) from exc
    return family, ignored


def verify_local_files(family: AnyFamily) -> None:
    """Each spec's local weights exist and are of its format, and a chat model has a template
    to chat with; a 400 naming the field if not."""
    for i, checked in enumerate(family.model_specs):
        if checked.local_path:
            check_local_weights(
                Path(checked.local_path).expanduser(),
                checked.model_format,
                param=f"model_specs[{i}].model_uri",
            )
        elif not checked.model_hub:
            raise InvalidRequest(
                f"model_specs[{i}] needs model_uri or model_id", param=f"model_specs[{i}]"
            )
    if isinstance(family, LLMFamily) and "chat" in family.model_ability:
        _check_template(family)


def _as_object(model: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(model, str):
        try:
            model = json.loads(model)
        except ValueError as exc:
            raise InvalidRequest(f"model is not valid JSON: {exc}", param="model") from exc
    if not isinstance(model, dict):
        raise InvalidRequest("model must be a JSON object", param="model")
    return dict(model)


def _is_empty(value: Any) -> bool:
    """Xinference's files spell an unset field as null, {} or [] (and a virtualenv with no
    packages): none of them asks anything."""
    if isinstance(value, dict) and "packages" in value:
        return not value.get("packages")
    return value is None or value == {} or value == []


def _flat_spec(model_type: ModelType, data: dict[str, Any]) -> dict[str, Any]:
    uri = str(data.get("model_uri") or "")
    default_format = "pytorch"
    if model_type == ModelType.AUDIO:
        default_format = "onnx" if uri.endswith(".onnx") else "ct2"
    spec = {
        "model_format": data.pop("model_format", default_format),
        "model_size_in_billions": data.pop("model_size_in_billions", 0),
    }
    for key in ("model_id", "model_uri", "model_hub", "quantization", "quantizations"):
        if key in data:
            spec[key] = data.pop(key)
    return spec


def _specs(raw_specs: Any, model_type: ModelType) -> tuple[list[Any], list[str]]:
    """Each spec in inferd's form, and the spec fields that were ignored."""
    if not isinstance(raw_specs, list):
        return raw_specs, []  # validation names what is wrong with it
    specs: list[Any] = []
    ignored: list[str] = []
    for i, raw in enumerate(raw_specs):
        if not isinstance(raw, dict):
            specs.append(raw)
            continue
        raw = {k: v for k, v in raw.items() if not _is_empty(v)}
        if model_type != ModelType.LLM:
            raw.setdefault("model_size_in_billions", 0)  # Xinference's other specs have none
        quantization = raw.pop("quantization", None)
        if quantization is not None and "quantizations" not in raw:
            raw["quantizations"] = [quantization]  # v2 writes one per spec
        spec = {k: v for k, v in raw.items() if k in _SPEC_FIELDS}
        ignored += sorted(
            f"model_specs[{i}].{k}" for k in raw if k not in _SPEC_FIELDS and k != "model_id"
        )
        hub = raw.get("model_hub")
        if not isinstance(hub, dict):
            spec.pop("model_hub", None)
            if raw.get("model_id"):
                # Xinference names one hub per spec ("model_hub": "modelscope"); inferd's
                # catalogue form, a dict of repo ids per hub, is taken as it is.
                name = str(hub or "huggingface").lower()
                if name not in _HUBS:
                    raise InvalidRequest(
                        f"model_specs[{i}].model_hub {hub!r} is not a hub inferd downloads "
                        "from: huggingface or modelscope",
                        param=f"model.model_specs[{i}].model_hub",
                    )
                spec["model_hub"] = {name: raw["model_id"]}
        specs.append(spec)
    return specs, ignored


def _llm(data: dict[str, Any], catalog: Catalog) -> None:
    """Xinference's rules for a custom LLM's family, template, stops and abilities."""
    parent = _parent(data, ModelType.LLM, catalog)
    abilities = data.get("model_ability")
    template = data.get("chat_template")
    named = _named_template(template, catalog)
    if named is not None:
        # "chat_template": "qwen2.5-instruct" takes that family's template, which for most
        # built-ins is the one their weights carry (None: read from the weights).
        template = data["chat_template"] = named.chat_template
        for inherited in ("stop", "stop_token_ids"):
            if not data.get(inherited) and getattr(named, inherited):
                data[inherited] = getattr(named, inherited)
    own_template = template is not None and named is None
    if named is not None and template is None:
        data.pop("chat_template")
    if own_template and not _is_jinja(template):
        raise InvalidRequest(
            f"chat_template {template!r} is neither a Jinja template nor the name of a built-in "
            "model whose template to take (e.g. 'qwen2.5-instruct')",
            param="model.chat_template",
        )
    if parent is not None:
        for inherited in (
            "chat_template",
            "stop",
            "stop_token_ids",
            "context_length",
            "reasoning_start_tag",
            "reasoning_end_tag",
        ):
            if inherited == "chat_template" and named is not None:
                continue  # the template it named wins over its family's
            if data.get(inherited) is None and getattr(parent, inherited, None):
                data[inherited] = getattr(parent, inherited)
    if abilities is None:
        chats = data.get("chat_template") or named is not None
        abilities = ["generate", "chat"] if chats else ["generate"]
    if not isinstance(abilities, list):
        return  # validation names what is wrong with it
    if parent is not None and "vision" in parent.model_ability and "vision" not in abilities:
        abilities = [*abilities, "vision"]  # a vision family's model sees images
    family_name = data.get("model_family")
    calls_tools = any(f is not None and "tools" in f.model_ability for f in (parent, named))
    if "tools" in abilities and not (own_template or calls_tools):
        raise InvalidRequest(
            "a model with 'tools' needs a model_family that calls tools "
            f"({_names(catalog, 'tools')}) or a chat_template of its own that renders tools and "
            f"calls; {family_name!r} is neither",
            param="model.model_family",
        )
    if "vision" in abilities and (parent is None or "vision" not in parent.model_ability):
        raise InvalidRequest(
            f"a model with 'vision' needs a model_family that is a vision model "
            f"({_names(catalog, 'vision')}); {family_name!r} is not",
            param="model.model_family",
        )
    data["model_ability"] = abilities
    data.setdefault("context_length", 2048)


def _check_template(family: LLMFamily) -> None:
    """A chat model needs a template: its own, its family's, or one inside its weights."""
    if family.chat_template:
        return
    for i, spec in enumerate(family.model_specs):
        if spec.local_path is None:
            return  # downloaded weights are read at launch, where the engine checks
        found = weights_carry_a_template(Path(spec.local_path).expanduser(), spec.model_format)
        if found is False:
            raise InvalidRequest(
                f"{family.model_name!r} has 'chat' but no chat template: give chat_template as "
                "Jinja (the one in the model's tokenizer_config.json), or the name of a built-in "
                "model whose template fits (e.g. 'qwen2.5-instruct', 'llama-3.1-instruct'), or "
                f"a model_family that is one; model_specs[{i}]'s weights carry none "
                + (f"and {family.model_family!r} is not built in" if family.model_family else ""),
                param="model.chat_template",
            )


def _is_jinja(template: Any) -> bool:
    return not isinstance(template, str) or "{{" in template or "{%" in template


def _named_template(template: Any, catalog: Catalog) -> LLMFamily | None:
    """The built-in family a chat_template names instead of spelling out, if it does."""
    if not isinstance(template, str) or _is_jinja(template):
        return None
    try:
        family = catalog.get(template.strip(), ModelType.LLM)
    except NotFound:
        return None
    if not isinstance(family, LLMFamily) or "chat" not in family.model_ability:
        return None
    return family if family.is_builtin else None


def _rerank(data: dict[str, Any]) -> None:
    kind = str(data.pop("type", "normal"))
    if kind not in _RERANK_TYPES:
        raise InvalidRequest(
            f"rerank type {kind!r} is not supported: inferd serves cross-encoders ('normal', "
            "or 'unknown' to let it tell) and bi-encoders; LLM-based rerankers have no engine here",
            param="model.type",
        )
    data.setdefault("method", _RERANK_TYPES[kind])
    data.setdefault("max_tokens", 512)


def _audio(data: dict[str, Any]) -> None:
    """The weights' form decides the engine: a CTranslate2 Whisper folder recognises speech,
    a Piper voice speaks; an ability the form cannot do is refused, naming the family."""
    formats = {str(s.get("model_format")) for s in data["model_specs"] if isinstance(s, dict)}
    can = {"ct2": "audio2text", "onnx": "text2audio"}
    abilities = data.get("model_ability") or [can[f] for f in sorted(formats) if f in can]
    family = data.get("model_family", data.get("model_name"))
    for ability in abilities if isinstance(abilities, list) else []:
        if ability not in can.values() or not any(can.get(f) == ability for f in formats):
            raise InvalidRequest(
                f"inferd has no engine for the custom speech model {family!r} with "
                f"{ability!r}: speech recognition (audio2text) runs on faster-whisper from a "
                "CTranslate2 folder (model.bin and config.json), speech synthesis (text2audio) "
                "on Piper from a .onnx voice with its .onnx.json",
                param="model.model_ability",
            )
    data["model_ability"] = abilities


def _parent(data: dict[str, Any], model_type: ModelType, catalog: Catalog) -> AnyFamily | None:
    """The built-in family a custom model names in `model_family`, if it names one; any other
    name is the user's own (Xinference accepts those too)."""
    name = data.get("model_family")
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("model_family must be a name", param="model.model_family")
    try:
        family = catalog.get(name, model_type)
    except NotFound:
        return None
    return family if family.is_builtin else None


def _names(catalog: Catalog, ability: str) -> str:
    names = [
        f.model_name
        for f in catalog.list(ModelType.LLM)
        if isinstance(f, LLMFamily) and f.is_builtin and ability in f.model_ability
    ]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
