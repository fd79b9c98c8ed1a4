"""A launch request: what to serve and how. The same fields Xinference's launch takes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferd.catalog.schema import ModelType
from inferd.errors import InvalidRequest


class LoraAdapter(BaseModel):
    lora_name: str = Field(min_length=1, max_length=128, pattern=r"^[\w.\-]+$")
    local_path: str = Field(min_length=1)


class PeftModelConfig(BaseModel):
    """Xinference's `peft_model_config`: LoRA adapters served beside the base model, each
    chosen per request by `lora_name`."""

    model_config = ConfigDict(extra="allow")  # its image-LoRA fields, which LLMs ignore

    lora_list: list[LoraAdapter] = Field(default_factory=list)


class LaunchRequest(BaseModel):
    # Unknown fields are engine options (n_ctx, n_parallel, ...), as in Xinference's launch.
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str = Field(min_length=1)
    model_type: str = "LLM"
    model_uid: str | None = Field(default=None, pattern=r"^[\w.\-]+$", max_length=128)
    model_engine: str | None = None
    model_format: str | None = None
    model_size_in_billions: str | None = None
    quantization: str | None = None
    model_path: str | None = None
    replica: int = Field(default=1, ge=1)
    n_gpu: int | str | None = "auto"
    gpu_idx: int | list[int] | None = None
    peft_model_config: PeftModelConfig | None = None
    download_hub: Literal["huggingface", "modelscope"] | None = None
    # Xinference's launch fields; what inferd cannot honour yet is refused by the manager.
    n_worker: int = Field(default=1, ge=1)
    request_limits: int | None = Field(
        default=None, ge=1, description="Requests each replica works on at once; more queue"
    )
    worker_ip: str | None = None
    replica_config: list[dict[str, Any]] | None = None
    enable_thinking: bool | None = None
    multimodal_projector: str | None = Field(
        default=None,
        min_length=1,
        description="Which of a GGUF spec's multimodal_projectors llama.cpp loads (the first "
        "unless named)",
    )
    engine_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[\w.+\-]+$",
        description="Run the engine at this version, in an environment of its own",
    )
    # Xinference's names for the same: an environment of the engine's own (true), or the
    # server's (false), with more packages beside the engine.
    enable_virtual_env: bool | None = None
    virtual_env_packages: list[str] | None = None
    virtual_env_find_links: list[str] | None = None
    envs: dict[str, str] | None = None
    idle_timeout: float | None = Field(
        default=None, gt=0, description="Unload after this many seconds without requests"
    )
    wait_ready: bool = Field(default=True, description="Answer only once the model is ready")

    @field_validator("model_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return ModelType.parse(value).value

    @field_validator("model_size_in_billions", mode="before")
    @classmethod
    def _size_as_text(cls, value: object) -> str | None:
        return None if value is None else str(value).replace(".", "_")

    def persisted(self) -> dict[str, Any]:
        """What the state store keeps to launch it again after a restart."""
        return self.model_dump(mode="json", exclude={"wait_ready"}, exclude_none=True)

    @property
    def loras(self) -> dict[str, str]:
        """LoRA adapters by name, with their folders."""
        adapters = self.peft_model_config.lora_list if self.peft_model_config else []
        return {a.lora_name: a.local_path for a in adapters}

    def gpu_list(self) -> list[int] | None:
        """The GPUs gpu_idx names; None where it names none."""
        return [self.gpu_idx] if isinstance(self.gpu_idx, int) else self.gpu_idx

    def gpu_count(self) -> int | None:
        """How many GPUs the launch asks for; None for "auto". A 400 for malformed fields."""
        gpu_idx = self.gpu_list()
        if gpu_idx is not None and (not gpu_idx or any(i < 0 for i in gpu_idx)):
            raise InvalidRequest("gpu_idx must list GPU numbers (0, 1, ...)", param="gpu_idx")
        if gpu_idx is not None and len(set(gpu_idx)) != len(gpu_idx):
            raise InvalidRequest("gpu_idx names a GPU twice", param="gpu_idx")
        n_gpu = self.n_gpu
        if n_gpu in (None, "auto"):
            return len(gpu_idx) if gpu_idx else None
        try:
            count = int(n_gpu)
        except ValueError:
            raise InvalidRequest(
                f"n_gpu must be 'auto' or a number of GPUs (0 for the CPU), not {n_gpu!r}",
                param="n_gpu",
            ) from None
        if count < 0:
            raise InvalidRequest("n_gpu cannot be negative", param="n_gpu")
        if gpu_idx is not None and count != len(gpu_idx):
            raise InvalidRequest(
                f"n_gpu={count} but gpu_idx names {len(gpu_idx)} GPU(s)", param="gpu_idx"
            )
        return count

    @property
    def engine_options(self) -> dict[str, Any]:
        options = dict(self.model_extra or {})
        if self.enable_thinking is not None:
            options["enable_thinking"] = self.enable_thinking
        return options
