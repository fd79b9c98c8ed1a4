"""What cluster mode costs per request, and how long a node's death interrupts a model.

    python benchmarks/cluster.py [--seconds 8] [--xinference-venv PATH]

On this one machine, in one run: sentence-transformers alone (the ceiling), inferd alone, inferd
with --ray-address on Ray's own local cluster (a head that places nothing and worker nodes with
2 CPUs each), and, given a venv with xinference, Xinference's own cluster (a supervisor and a
worker), all serving the demo embedding model to the same closed-loop loads as compare.py. The
Ray cluster's difference from inferd alone is the routing: TCP with a token to the node's model
process instead of a Unix socket. Then a node is removed under a steady client, and the time until
its replica serves again on another node is measured.

Only inferd's recovery from a dead node is timed.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from compare import (
    EMBEDDING,
    Rate,
    XinferenceCluster,
    closed_loop,
    demo_weights,
    embed_request,
    ratio,
    raw_embeddings,
)
from inferd_server import BenchServer


def _launch(server: BenchServer, replicas: int = 1) -> float:
    started = time.perf_counter()
    answer = httpx.post(
        f"{server.url}/v1/models",
        json={"model_name": EMBEDDING, "model_type": "embedding", "replica": replicas},
        timeout=600,
    )
    answer.raise_for_status()
    return time.perf_counter() - started


def _loads(
    url: str, seconds: float, model: str = EMBEDDING, headers: dict[str, str] | None = None
) -> dict[int, Rate]:
    time.sleep(2)  # let the launch settle
    return {c: closed_loop(url, headers or {}, c, seconds, embed_request(model)) for c in (1, 32)}


def _reschedule(cluster: Any, server: BenchServer) -> tuple[float, float, dict[int, int]]:
    """Remove the node holding the model's replica under a steady client: seconds until the
    server saw the replica gone, until it was ready on another node, and the statuses the
    client got meanwhile."""
    replica = server.models()[EMBEDDING]["replicas"][0]
    doomed = next(n for n in cluster.worker_nodes if n.node_id == replica["node_id"])
    statuses: dict[int, int] = {}
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                try:
                    status = http.post(
                        "/v1/embeddings", json={"model": EMBEDDING, "input": "still there?"}
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1

    sender = threading.Thread(target=client)
    sender.start()
    time.sleep(1)
    removed = time.perf_counter()
    cluster.remove_node(doomed, allow_graceful=False)
    noticed = None
    while True:
        current = server.models()[EMBEDDING]["replicas"][0]
        if noticed is None and current["status"] != "ready":
            noticed = time.perf_counter() - removed
        if current["status"] == "ready" and current["node_id"] != replica["node_id"]:
            back = time.perf_counter() - removed
            break
        time.sleep(0.05)
    time.sleep(1)
    stop.set()
    sender.join()
    return noticed or float("nan"), back, statuses


def _ray_cpu(seconds: float = 5.0) -> float:
    """The share of one core Ray's own processes (GCS, raylets, their workers) use while
    nothing is asked of them: on one machine that is taken from the model."""

    def ticks() -> int:
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"ray" not in cmdline or b"inferd" in cmdline:
                    continue
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError):
                continue
        return total

    before = ticks()
    time.sleep(seconds)
    return (ticks() - before) / os.sysconf("SC_CLK_TCK") / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--xinference-venv", type=Path, help="a venv with xinference installed")
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    print("engine alone ...", flush=True)
    single_raw, batched_raw = raw_embeddings(demo_weights()[EMBEDDING], args.seconds)

    print("inferd alone ...", flush=True)
    alone = BenchServer("--log-level", "warning")
    try:
        alone_launch = _launch(alone)
        alone_rates = _loads(alone.url, args.seconds)
    finally:
        alone.stop()

    print("inferd on a Ray cluster ...", flush=True)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            # Ray's defaults declare a node dead after about 15 s of missed health checks.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray_idle = _ray_cpu()
        clustered = BenchServer("--ray-address", cluster.address, "--log-level", "warning")
        try:
            cluster_launch = _launch(clustered)
            cluster_rates = _loads(clustered.url, args.seconds)
            print("removing the node under load ...", flush=True)
            cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()
            noticed, back, statuses = _reschedule(cluster, clustered)
        finally:
            clustered.stop()
    finally:
        cluster.shutdown()

    theirs: dict[int, Rate] = {}
    their_launch = float("nan")
    if args.xinference_venv:
        print("Xinference's cluster ...", flush=True)
        xinference = XinferenceCluster(args.xinference_venv, demo_weights(), models=(EMBEDDING,))
        try:
            their_launch = xinference.launch_seconds[EMBEDDING]
            theirs = _loads(
                xinference.url, args.seconds, xinference.uids[EMBEDDING], xinference.headers
            )
        finally:
            xinference.stop()

    rows = [
        "| measure | engine alone | inferd alone | inferd on Ray | Xinference cluster "
        "| Ray / alone | Ray / engine | Ray / Xinference cluster |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients, engine in ((1, single_raw), (32, batched_raw)):
        a, c = alone_rates[clients], cluster_rates[clients]
        x = theirs.get(clients, Rate(float("nan"), float("nan"), float("nan"), 0))
        rows.append(
            f"| embeddings, {clients} client(s) (req/s) | {engine:.1f} | {a.per_second:.1f} | "
            f"{c.per_second:.1f} | {x.per_second:.1f} | {ratio(c.per_second, a.per_second)} | "
            f"{ratio(c.per_second, engine)} | {ratio(c.per_second, x.per_second)} |"
        )
        rows.append(
            f"| embeddings, {clients} client(s) p50 | - | {a.p50 * 1e3:.1f} ms | "
            f"{c.p50 * 1e3:.1f} ms | {x.p50 * 1e3:.1f} ms | {ratio(a.p50, c.p50)} | - | "
            f"{ratio(x.p50, c.p50)} |"
        )
    rows.append(
        f"| launch to ready | - | {alone_launch:.1f} s | {cluster_launch:.1f} s | "
        f"{their_launch:.1f} s | {ratio(alone_launch, cluster_launch)} | - | "
        f"{ratio(their_launch, cluster_launch)} |"
    )
    print("\n".join(rows))
    print(
        f"\nnode removed under a steady client: the server saw its replica gone after "
        f"{noticed:.1f} s, and it served again from another node after {back:.1f} s; "
        f"statuses meanwhile: {statuses}"
    )
    print(f"Ray's own processes, idle: {ray_idle:.0%} of one core")
    errors = sum(
        r.errors for r in (*alone_rates.values(), *cluster_rates.values(), *theirs.values())
    )
    print(f"errors under load: {errors}")


if __name__ == "__main__":
    main()
