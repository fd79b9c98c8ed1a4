"""Loads the built-in families from `data/*.json` and answers look-ups by name and type."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from pydantic import TypeAdapter

from inferd.catalog.schema import AnyFamily, EmbeddingFamily, Family, ModelType, RerankFamily
from inferd.errors import Conflict, InvalidRequest, NotFound

_DATA_FILES = {
    ModelType.LLM: "llm.json",
    ModelType.EMBEDDING: "embedding.json",
    ModelType.RERANK: "rerank.json",
    ModelType.AUDIO: "audio.json",
    ModelType.IMAGE: "image.json",
}
_family_list = TypeAdapter(list[Family])


class Catalog:
    def __init__(self, families: list[AnyFamily]):
        self._by_type: dict[ModelType, dict[str, AnyFamily]] = {t: {} for t in ModelType}
        for family in families:
            bucket = self._by_type[ModelType(family.model_type)]
            if family.model_name in bucket:
                raise ValueError(f"duplicate model_name {family.model_name!r}")
            bucket[family.model_name] = family

    @classmethod
    def builtin(cls) -> Catalog:
        families: list[AnyFamily] = []
        data = resources.files("inferd.catalog") / "data"
        for model_type, file_name in _DATA_FILES.items():
            raw = json.loads((data / file_name).read_text(encoding="utf-8"))
            for entry in _family_list.validate_python(raw):
                if entry.model_type != model_type.value:
                    raise ValueError(f"{file_name}: {entry.model_name} is a {entry.model_type}")
                families.append(entry)
        return cls(families)

    def register(self, family: AnyFamily) -> None:
        """Add a custom family; a built-in name cannot be taken."""
        self.ensure_free(family)
        self._by_type[ModelType(family.model_type)][family.model_name] = family

    def ensure_free(self, family: AnyFamily) -> None:
        existing = self._by_type[ModelType(family.model_type)].get(family.model_name)
        if existing is not None:
            kind = "built-in" if existing.is_builtin else "registered"
            raise Conflict(
                f"a {kind} {family.model_type} model named {family.model_name!r} exists already",
                param="model_name",
            )

    def unregister(self, model_name: str, model_type: ModelType) -> None:
        family = self.get(model_name, model_type)
        if family.is_builtin:
            raise InvalidRequest(
                f"{model_name!r} is a built-in model and cannot be unregistered",
                param="model_name",
            )
        del self._by_type[model_type][model_name]

    def list(self, model_type: ModelType | None = None) -> list[AnyFamily]:
        types = [model_type] if model_type else list(ModelType)
        return [f for t in types for f in self._by_type[t].values()]

    def get(self, model_name: str, model_type: ModelType | None = None) -> AnyFamily:
        types = [model_type] if model_type else list(ModelType)
        for t in types:
            family = self._by_type[t].get(model_name)
            if family is not None:
                return family
        embedding = self._by_type[ModelType.EMBEDDING].get(model_name)
        if model_type == ModelType.RERANK and isinstance(embedding, EmbeddingFamily):
            return RerankFamily.from_embedding(embedding)  # any embedding model ranks by cosine
        where = f" of type {model_type.value}" if model_type else ""
        raise NotFound(
            f"no model named {model_name!r}{where} in the catalogue; "
            "`inferd registrations -t TYPE` lists them",
            param="model_name",
        )


@lru_cache(maxsize=1)
def _builtin_families() -> tuple[AnyFamily, ...]:
    return tuple(Catalog.builtin().list())


def get_catalog() -> Catalog:
    """A fresh catalogue of the built-in families, to which a server adds its registrations."""
    return Catalog(list(_builtin_families()))
