"""The model registry: built-in model families, loaded from data files and validated."""

from inferd.catalog.registry import Catalog, get_catalog
from inferd.catalog.schema import EmbeddingFamily, Family, LLMFamily, ModelSpec, ModelType

__all__ = [
    "Catalog",
    "EmbeddingFamily",
    "Family",
    "LLMFamily",
    "ModelSpec",
    "ModelType",
    "get_catalog",
]
