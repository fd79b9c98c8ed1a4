"""GPU placement on a real NVIDIA GPU: a model process lands on the GPU NVML reports, sees only
that GPU, and a launch that cannot fit is refused before loading with what would fit.

These need a GPU, so `pytest` leaves them out (marker `gpu`); on a GPU machine run
`pytest -m gpu tests/test_gpu_placement_on_gpu.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import InferdServer, custom_model, local_llm, scrape

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def definition(name: str, path: Path) -> dict:
    return local_llm(name, path, TEMPLATE)


def gpu_pids() -> dict[int, set[int]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        found = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            found[i] = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        return found
    finally:
        pynvml.nvmlShutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("inferd-gpu"))
    yield srv
    srv.stop()


def test_a_model_lands_on_a_gpu_and_sees_only_it(server: InferdServer, tiny_llama: Path) -> None:
    workers = httpx.get(f"{server.url}/v1/workers", timeout=10).json()
    gpus = workers[0]["gpus"]
    assert workers[0]["gpu_count"] == len(gpus) >= 1 and gpus[0]["memory_total"] > 0

    with custom_model(
        server, "LLM", definition("tiny-gpu", tiny_llama), model_engine="transformers"
    ) as uid:
        answer = server.openai().completions.create(model=uid, prompt="The sea", max_tokens=4)
        assert answer.usage.completion_tokens == 4
        instances = httpx.get(f"{server.url}/v1/models/instances", timeout=10).json()
        pids = {r["pid"] for i in instances if i["model_uid"] == uid for r in i["replicas"]}
        on_gpu = gpu_pids()
        assert any(pids & held for held in on_gpu.values()), (pids, on_gpu)
        # /metrics carries each GPU's memory as NVML reports it.
        samples = scrape(server)
        totals = {
            dict(labels)["gpu"]: v
            for (name, labels), v in samples.items()
            if name == "inferd_gpu_memory_total_bytes"
        }
        used = {
            dict(labels)["gpu"]: v
            for (name, labels), v in samples.items()
            if name == "inferd_gpu_memory_used_bytes"
        }
        assert totals["0"] == gpus[0]["memory_total"] and 0 < used["0"] < totals["0"]


def test_a_launch_that_cannot_fit_is_refused_saying_what_would(
    server: InferdServer, tiny_llama: Path
) -> None:
    registrations = f"{server.url}/v1/model_registrations/LLM"
    body = {"model": json.dumps(definition("tiny-full", tiny_llama)), "persist": False}
    httpx.post(registrations, json=body, timeout=30).raise_for_status()
    # Another program takes nearly all of GPU 0, as a training job beside inferd would.
    hog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import torch,time; f,_=torch.cuda.mem_get_info(0); "
            "x=torch.empty(f-(256<<20),dtype=torch.uint8,device='cuda:0'); "
            "print('held',flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline().strip() == "held"
        launch = {"model_name": "tiny-full", "model_engine": "transformers", "gpu_idx": [0]}
        response = httpx.post(f"{server.url}/v1/models", json=launch, timeout=120)
    finally:
        hog.kill()
        hog.wait()
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    print("refused:", error["message"])  # shown with -s: what a user reads
    assert error["param"] == "gpu_idx"
    assert "does not fit" in error["message"] and "GPU 0 (" in error["message"]
    assert "n_gpu=0" in error["message"]

    too_many = {"model_name": "tiny-full", "model_engine": "transformers", "n_gpu": 64}
    response = httpx.post(f"{server.url}/v1/models", json=too_many, timeout=60)
    assert response.status_code == 400
    assert "asks for 64 GPUs" in response.json()["error"]["message"]
    httpx.delete(f"{registrations}/tiny-full", timeout=30).raise_for_status()
