"""The CLI as a user drives it: launch, list, terminate, registrations, endpoint discovery."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, pid_alive

pytestmark = pytest.mark.slow


def test_list_shows_both_demo_models(launched: InferdServer) -> None:
    table = launched.cli("list").stdout
    assert LLM in table and EMBEDDING in table and "ready" in table

    models = json.loads(launched.cli("list", "--json").stdout)
    by_id = {m["id"]: m for m in models}
    assert by_id[LLM]["model_engine"] == "llama.cpp"
    assert by_id[LLM]["model_format"] == "ggufv2"
    assert by_id[EMBEDDING]["model_engine"] == "sentence_transformers"
    assert all(m["status"] == "ready" for m in models)
    assert "Nodes" not in table  # a single machine: no column saying so on every row
    assert {r["node"] for m in models for r in m["replicas"]} == {"local"}


def test_nodes_lists_this_machine_and_what_runs_on_it(launched: InferdServer) -> None:
    listing = json.loads(launched.cli("nodes", "--json").stdout)
    assert listing["mode"] == "single"
    [node] = listing["nodes"]
    assert node["alive"] and node["cpu_count"] >= 1 and node["memory_total"] > 0
    assert {LLM, EMBEDDING} <= {r["model_uid"] for r in node["replicas"]}
    table = launched.cli("nodes").stdout
    assert "local" in table and f"{LLM}/0" in table


def test_terminate_ends_the_model_process(launched: InferdServer) -> None:
    uid = launched.cli(
        "launch", "-n", EMBEDDING, "-t", "embedding", "-u", "minilm-to-stop"
    ).stdout.strip()
    assert uid == "minilm-to-stop"
    pid = launched.models()[uid]["pid"]
    assert pid_alive(pid)

    launched.cli("terminate", uid)
    assert uid not in launched.models()
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(pid)


def test_terminate_unknown_uid_fails_clearly(server: InferdServer) -> None:
    result = server.cli("terminate", "no-such-uid", check=False)
    assert result.returncode == 1
    assert "no launched model with uid 'no-such-uid'" in result.stderr


def test_launch_whose_download_fails_says_why(server: InferdServer) -> None:
    result = server.cli("launch", "-n", "qwen2.5-instruct", check=False)
    assert result.returncode == 1
    assert "could not download the model" in result.stderr
    assert "huggingface (Qwen/Qwen2.5-0.5B-Instruct-GGUF)" in result.stderr
    # The other hub was tried too, and why it failed is said.
    assert "modelscope (qwen/Qwen2.5-0.5B-Instruct-GGUF): cannot connect" in result.stderr
    assert "--model-path" in result.stderr


def test_launch_passes_engine_options_and_reports_engine_failure(server: InferdServer) -> None:
    result = server.cli(
        "launch", "-n", LLM, "-u", "bad-options", "--no_such_llama_option", "1", check=False
    )
    assert result.returncode == 1
    assert "no_such_llama_option" in result.stderr
    assert "bad-options" not in server.models()


def test_engine_says_what_runs_on_this_machine(server: InferdServer) -> None:
    rows = json.loads(server.cli("engine", "-n", "qwen2.5-instruct", "--json").stdout)
    # vLLM's CPU build is not installed beside the server: it serves the safetensors specs on
    # this CPU from an environment of its own, built on the first launch.
    assert {r["model_format"] for r in rows["vllm"]} >= {"pytorch"}
    assert all(r["usable"] and r["reason"] is None for r in rows["vllm"])
    assert all(r["engine_env"].startswith("vllm-") for r in rows["vllm"])
    assert rows["llama.cpp"][0]["model_format"] == "ggufv2"
    table = server.cli("engine", "-n", "qwen2.5-instruct").stdout
    assert "On this machine" in table and "in its own environment (vllm-" in table


def test_gpu_requests_on_a_machine_without_one_are_400s(server: InferdServer) -> None:
    cases = [
        ({"n_gpu": 1}, "n_gpu", "no NVIDIA GPU"),
        ({"gpu_idx": [0]}, "gpu_idx", "no NVIDIA GPU"),
        ({"n_gpu": "two"}, "n_gpu", "a number of GPUs"),
        ({"n_gpu": 2, "gpu_idx": [0]}, "gpu_idx", "names 1 GPU"),
        ({"gpu_idx": [1, 1]}, "gpu_idx", "twice"),
    ]
    for fields, param, words in cases:
        response = httpx.post(
            f"{server.url}/v1/models",
            json={"model_name": LLM, "model_uid": "gpu-ask", **fields},
            timeout=60,
        )
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert error["param"] == param and words in error["message"], (fields, error)
    assert "gpu-ask" not in server.models()


def test_registrations_lists_the_catalogue(server: InferdServer) -> None:
    table = server.cli("registrations", "--model-type", "embedding").stdout
    assert "bge-large-zh-v1.5" in table and EMBEDDING in table
    llms = json.loads(server.cli("registrations", "-t", "LLM", "--json").stdout)
    assert any(f["model_name"] == LLM for f in llms)
    bad = server.cli("registrations", "-t", "spaceship", check=False)
    assert bad.returncode == 1 and "unknown model type" in bad.stderr


def test_endpoint_resolution_order(server: InferdServer) -> None:
    # The fixture's server runs on a random port: found through INFERD_HOME with no flag.
    assert server.cli("list").returncode == 0
    unreachable = "http://127.0.0.1:9"
    via_flag = server.cli("list", "-e", unreachable, check=False)
    assert (
        via_flag.returncode == 1
        and "cannot reach an inferd server at " + unreachable in via_flag.stderr
    )
    server.env["INFERD_ENDPOINT"] = unreachable
    try:
        via_env = server.cli("list", check=False)
    finally:
        del server.env["INFERD_ENDPOINT"]
    assert via_env.returncode == 1 and unreachable in via_env.stderr
