"""The model registry: built-in model families, loaded from data files and validated."""

from inferd.catalog.registry import Catalog, get_catalog
from inferd.catalog.schema import (
    AnyFamily,
    EmbeddingFamily,
    Family,
    LLMFamily,
    ModelSpec,
    ModelType,
    RerankFamily,
)

__all__ = [
    "AnyFamily",
    "Catalog",
    "EmbeddingFamily",
    "Family",
    "LLMFamily",
    "ModelSpec",
    "ModelType",
    "RerankFamily",
    "get_catalog",
]
