"""The model registry: built-in model families, loaded from data files and validated."""

from inferd.catalog.registry import Catalog, get_catalog
from inferd.catalog.schema import (
    AnyFamily,
    AudioFamily,
    EmbeddingFamily,
    Family,
    ImageFamily,
    LLMFamily,
    ModelSpec,
    ModelType,
    RerankFamily,
)

__all__ = [
    "AnyFamily",
    "AudioFamily",
    "Catalog",
    "EmbeddingFamily",
    "Family",
    "ImageFamily",
    "LLMFamily",
    "ModelSpec",
    "ModelType",
    "RerankFamily",
    "get_catalog",
]
