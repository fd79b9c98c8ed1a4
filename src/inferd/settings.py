"""One typed settings object, read from `INFERD_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INFERD_", extra="ignore")

    home: Path = Field(default=Path("~/.inferd"), description="Where inferd keeps all its state")
    host: str = "127.0.0.1"
    port: int = 9997
    endpoint: str | None = Field(default=None, description="Server address used by the CLI")
    model_src: str = Field(default="huggingface", description="huggingface or modelscope")
    launch_timeout: float = Field(default=900.0, description="Seconds a model may take to load")
    terminate_timeout: float = Field(default=10.0, description="Seconds before a model is killed")
    max_request_mb: int = Field(
        default=100, ge=1, description="Largest request body accepted, in MiB (else 413)"
    )
    auth: bool = Field(default=False, description="Require an API key on every request")
    api_key: str | None = Field(default=None, description="The key the CLI sends")
    max_queue: int = Field(
        default=512, ge=0, description="Requests that may wait for a busy model (else 429)"
    )
    request_timeout: float = Field(
        default=1800.0, ge=0, description="Seconds a request may take, queue included; 0: none"
    )
    send_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a streamed answer waits for a stalled client"
    )
    # Longer than clients keep an idle connection (httpx and the SDKs built on it 5 s, aiohttp
    # 15 s) and than proxies in front do (nginx, load balancers: 60 s), so the client is the
    # one that closes it: a server closing first races the client's next request on it, which
    # then fails with "server disconnected without sending a response" (most likely what
    # failed one of eight concurrent requests in a test run: uvicorn's own 5 s against the
    # openai SDK's 5 s).
    keep_alive_timeout: int = Field(
        default=75, ge=1, description="Seconds an idle client connection is kept open"
    )
    allowed_paths: Annotated[list[Path] | None, NoDecode] = Field(
        default=None,
        description="Folders local weights may come from (registrations, model_path, LoRA), "
        "separated like PATH",
    )
    image_max_mb: int = Field(
        default=20, ge=1, description="Largest image in a chat message, in MiB (else 400)"
    )
    image_fetch_timeout: float = Field(
        default=15.0, gt=0, description="Seconds the server spends fetching an image URL"
    )
    image_urls_private: bool = Field(
        default=False,
        description="Let image URLs in chat messages reach loopback, private and link-local "
        "addresses (off: only public ones, so requests cannot probe the server's network)",
    )
    request_wait: float = Field(
        default=30.0, description="Seconds a request waits for a restarting model before a 503"
    )
    api_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes taking HTTP requests on the port: 1, the server itself; above 1, "
        "that many front processes, which relay embeddings and rerank to model processes "
        "themselves and pass the rest on to the server",
    )
    ray_address: str | None = Field(
        default=None,
        description="A Ray cluster to run model processes on (`auto`, or the head's host:port)",
    )
    cluster_weights: Literal["auto", "copy"] = Field(
        default="auto",
        description="On a cluster, nodes load weights where the server keeps them if they see "
        "that path (a shared filesystem), else copy them into their own cache; `copy`: always",
    )

    engine_env: Literal["auto", "managed", "current"] = Field(
        default="auto",
        description="Where model processes run: `auto`, in the server's environment when it has "
        "the engine and in the engine's own (built on first use) when not; `managed`, in the "
        "engine's own wherever inferd has a recipe for one; `current`, always in the server's "
        "(you install the engines)",
    )
    wheels: Annotated[list[Path] | None, NoDecode] = Field(
        default=None,
        description="Wheel folders engine environments install from before any index "
        "(os.pathsep-separated); with engine_index_url=none, from nothing else",
    )
    engine_index_url: str | None = Field(
        default=None,
        description="The package index engine environments install from (default: PIP_INDEX_URL, "
        "else PyPI); `none`: wheel folders only",
    )
    torch_index_url: str = Field(
        default="https://download.pytorch.org/whl/cpu",
        description="Where CPU machines' engine environments find torch's CPU build (PyPI has "
        "only the CUDA one) when no wheel folder holds it; `none`: nowhere else",
    )
    engine_offline: bool = Field(
        default=False,
        description="Build engine environments from uv's cache and wheel folders only",
    )
    engine_platform: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Which builds engine environments take: `auto`, CUDA's where an NVIDIA "
        "driver is found (on a cluster: where its nodes have GPUs), else the CPU's; `cpu` (a "
        "GPU machine whose models all run on the CPU: its environments are a fifth the size); "
        "`cuda` (a driver this server cannot see, as in some containers)",
    )

    @field_validator("allowed_paths", "wheels", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part.strip()] or None
        return value

    def model_post_init(self, __context: object) -> None:
        self.home = self.home.expanduser().resolve()
        if self.allowed_paths is not None:
            self.allowed_paths = [p.expanduser().resolve() for p in self.allowed_paths]
        if self.wheels is not None:
            self.wheels = [p.expanduser().resolve() for p in self.wheels]

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def state_db(self) -> Path:
        return self.home / "state.db"

    @property
    def responses_db(self) -> Path:
        return self.home / "responses.db"

    @property
    def server_record(self) -> Path:
        """Where the last started server writes its address, so the CLI finds it."""
        return self.home / "server.json"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
