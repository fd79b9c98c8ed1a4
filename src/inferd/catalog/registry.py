"""Loads the built-in families from `data/*.json` and answers look-ups by name and type."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from pydantic import TypeAdapter

from inferd.catalog.schema import EmbeddingFamily, Family, LLMFamily, ModelType
from inferd.errors import NotFound

_DATA_FILES = {ModelType.LLM: "llm.json", ModelType.EMBEDDING: "embedding.json"}
_family_list = TypeAdapter(list[Family])


class Catalog:
    def __init__(self, families: list[LLMFamily | EmbeddingFamily]):
        self._by_type: dict[ModelType, dict[str, LLMFamily | EmbeddingFamily]] = {
            t: {} for t in ModelType
        }
        for family in families:
            bucket = self._by_type[ModelType(family.model_type)]
            if family.model_name in bucket:
                raise ValueError(f"duplicate model_name {family.model_name!r}")
            bucket[family.model_name] = family

    @classmethod
    def builtin(cls) -> Catalog:
        families: list[LLMFamily | EmbeddingFamily] = []
        data = resources.files("inferd.catalog") / "data"
        for model_type, file_name in _DATA_FILES.items():
            raw = json.loads((data / file_name).read_text(encoding="utf-8"))
            for entry in _family_list.validate_python(raw):
                if entry.model_type != model_type.value:
                    raise ValueError(f"{file_name}: {entry.model_name} is a {entry.model_type}")
                families.append(entry)
        return cls(families)

    def list(self, model_type: ModelType | None = None) -> list[LLMFamily | EmbeddingFamily]:
        types = [model_type] if model_type else list(ModelType)
        return [f for t in types for f in self._by_type[t].values()]

    def get(
        self, model_name: str, model_type: ModelType | None = None
    ) -> LLMFamily | EmbeddingFamily:
        types = [model_type] if model_type else list(ModelType)
        for t in types:
            family = self._by_type[t].get(model_name)
            if family is not None:
                return family
        where = f" of type {model_type.value}" if model_type else ""
        raise NotFound(
            f"no model named {model_name!r}{where} in the catalogue; "
            "`inferd registrations -t TYPE` lists them",
            param="model_name",
        )


@lru_cache(maxsize=1)
def get_catalog() -> Catalog:
    return Catalog.builtin()
