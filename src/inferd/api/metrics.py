"""Prometheus metrics at /metrics: what each model's requests did (counts by status, latency,
time to first token, inter-token latency, tokens) and, read at scrape time, what its
processes are (replicas by status, slots, requests in flight and queued, restarts, resident
memory) and each GPU's memory, followed by the figures engines keep themselves (vLLM's running
and waiting requests, KV-cache use, prefix-cache hits; llama.cpp's tokens/s and deferred
requests; the embedding batcher's batch sizes), labelled with the model's uid and replica."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from inferd.runtime.gpus import discover
from inferd.runtime.manager import ModelManager
from inferd.runtime.replica import Replica

router = APIRouter()

REGISTRY = CollectorRegistry()
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "inferd_requests",
    "Requests relayed to a model, by endpoint and HTTP status (499: the client hung up first)",
    ["model", "endpoint", "status"],
    registry=REGISTRY,
)
RELAYED_BY = Counter(
    "inferd_api_process_requests",
    "Requests relayed to a model, by the API process that relayed it: the server, or one of "
    "the fronts `--api-processes` adds",
    ["process"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "inferd_request_seconds",
    "Time from a request reaching its model to its last byte",
    ["model", "endpoint"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
FIRST_TOKEN = Histogram(
    "inferd_time_to_first_token_seconds",
    "Time from a streamed request reaching its model to its first chunk",
    ["model", "endpoint"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
INTER_TOKEN = Histogram(
    "inferd_inter_token_latency_seconds",
    "Time between consecutive events of a streamed answer (a token each, as engines stream)",
    ["model", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
TOKENS = Counter(
    "inferd_tokens",
    "Tokens read (prompt) and written (completion), streamed answers included",
    ["model", "kind"],
    registry=REGISTRY,
)


class _ModelState(Collector):
    """The models' processes as they are at scrape time."""

    def __init__(self, manager: ModelManager):
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "inferd_model_replicas", "Model processes by status", labels=["model", "status"]
        )
        inflight = GaugeMetricFamily(
            "inferd_model_requests_in_flight", "Requests a model is answering", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "inferd_model_requests_queued",
            "Requests waiting for a free slot of a model",
            labels=["model"],
        )
        slots = GaugeMetricFamily(
            "inferd_model_slots",
            "Requests each model process works on at once (more wait in the queue)",
            labels=["model", "replica"],
        )
        restarts = CounterMetricFamily(
            "inferd_model_restarts", "Times a model's processes were restarted", labels=["model"]
        )
        memory = GaugeMetricFamily(
            "inferd_model_process_resident_memory_bytes",
            "Resident memory of each model process",
            labels=["model", "replica"],
        )
        for instance in self.manager.list():
            statuses: dict[str, int] = {}
            for replica in instance.replicas:
                statuses[replica.status] = statuses.get(replica.status, 0) + 1
                if (rss := replica.memory_bytes()) is not None:
                    memory.add_metric([instance.uid, str(replica.index)], rss)
                if replica.ready and replica.slots is not None:
                    slots.add_metric([instance.uid, str(replica.index)], replica.slots)
            for status, count in statuses.items():
                replicas.add_metric([instance.uid, status], count)
            inflight.add_metric([instance.uid], instance.inflight)
            queued.add_metric([instance.uid], instance.admission.queued)
            restarts.add_metric([instance.uid], sum(r.restarts for r in instance.replicas))
        yield from (replicas, inflight, queued, slots, restarts, memory)
        yield from _gpu_memory()


def _gpu_memory() -> Iterator[Metric]:
    """Each GPU's memory as NVML reports it now (nothing on a machine without NVIDIA GPUs)."""
    found = discover()
    if not found:
        return
    labels = ["gpu", "name", "uuid"]
    total = GaugeMetricFamily("inferd_gpu_memory_total_bytes", "GPU memory", labels=labels)
    used = GaugeMetricFamily(
        "inferd_gpu_memory_used_bytes", "GPU memory in use, by any process", labels=labels
    )
    for gpu in found:
        values = [str(gpu.index), gpu.name, gpu.uuid]
        total.add_metric(values, gpu.total)
        used.add_metric(values, gpu.total - gpu.free)
    yield from (total, used)


def watch(manager: ModelManager) -> _ModelState:
    """Add the live model state of this server's manager to the metrics."""
    collector = _ModelState(manager)
    REGISTRY.register(collector)
    return collector


def unwatch(collector: _ModelState) -> None:
    REGISTRY.unregister(collector)


class _Families(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def _scrape(replica: Replica) -> str:
    """A model process's own figures; empty where its engine keeps none or it cannot answer."""
    if replica.process is None or replica.status != "ready":
        return ""
    try:
        response = await replica.process.client.get("/metrics", timeout=5.0)
    except Exception:
        return ""  # it is restarting or busy dying; the next scrape sees it again
    return response.text if response.status_code == 200 else ""


async def engine_metrics(manager: ModelManager) -> bytes:
    """Every model process's engine figures, one family per metric across models, each sample
    labelled with its model's uid and replica."""
    replicas = [(i.uid, r) for i in manager.list() for r in i.replicas]
    texts = await asyncio.gather(*(_scrape(r) for _, r in replicas))
    families: dict[str, Metric] = {}
    for (uid, replica), text in zip(replicas, texts, strict=True):
        if not text:
            continue
        for family in text_string_to_metric_families(text):
            # The process's own Python and memory figures are the server's business, and
            # inferd_model_process_resident_memory_bytes already carries the memory.
            if family.name.startswith(("python_", "process_")):
                continue
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            labels = {"model_uid": uid, "replica": str(replica.index)}
            merged.samples.extend(
                sample._replace(labels={**sample.labels, **labels}) for sample in family.samples
            )
    if not families:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    manager: ModelManager = request.app.state.manager
    body = generate_latest(REGISTRY) + await engine_metrics(manager)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
