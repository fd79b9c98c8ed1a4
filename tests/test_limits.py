"""Request bodies over the server's limit are refused with a 413, whether their size is announced
or they arrive in chunks; bodies under it go through untouched. An idle client connection stays
open longer than clients keep one (`INFERD_KEEP_ALIVE_TIMEOUT`), in the server and in its front
processes alike."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import InferdServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("inferd-limits"), env={"INFERD_MAX_REQUEST_MB": "1"})
    yield srv
    srv.stop()


def body(size: int) -> bytes:
    text = "x" * size
    return json.dumps({"model": "nothing-here", "input": [text]}).encode()


def chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 64 << 10):
        yield data[start : start + (64 << 10)]


def test_bodies_over_the_limit_are_413(small: InferdServer) -> None:
    url = f"{small.url}/v1/embeddings"
    headers = {"content-type": "application/json"}
    for content in (body(2 << 20), chunks(body(2 << 20))):  # announced, then chunked
        response = httpx.post(url, content=content, headers=headers, timeout=30)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_large" and "1 MiB" in error["message"]


def test_bodies_under_the_limit_go_through(small: InferdServer) -> None:
    url = f"{small.url}/v1/embeddings"
    headers = {"content-type": "application/json"}
    for content in (body(512 << 10), chunks(body(512 << 10))):
        response = httpx.post(url, content=content, headers=headers, timeout=30)
        # Read and understood: the model it names is not launched.
        assert response.status_code == 404, response.text
        assert "nothing-here" in response.json()["error"]["message"]
    assert httpx.get(f"{small.url}/health", timeout=5).status_code == 200


def health_on(connection: http.client.HTTPConnection) -> int:
    """`GET /health` on an open connection (http.client reuses it and never opens another:
    one the server closed fails here): its status."""
    connection.request("GET", "/health")
    answer = connection.getresponse()
    answer.read()
    return answer.status


def test_an_idle_connection_outlives_the_clients_keep_alive(small: InferdServer) -> None:
    """httpx (the openai SDK's) keeps an idle connection 5 s, aiohttp 15 s: the server keeps it
    longer, so a request sent on it as the client's time runs out is never cut off."""
    connection = http.client.HTTPConnection("127.0.0.1", small.port, timeout=30)
    try:
        assert health_on(connection) == 200
        time.sleep(6)
        assert health_on(connection) == 200
    finally:
        connection.close()


def test_the_keep_alive_is_the_settings_in_front_processes_too(tmp_path: Path) -> None:
    srv = InferdServer(tmp_path, "--api-processes", "2", env={"INFERD_KEEP_ALIVE_TIMEOUT": "1"})
    try:
        connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            assert health_on(connection) == 200
            time.sleep(2.5)
            assert connection.sock is not None
            connection.sock.settimeout(1)  # closed by now: an open one times out here
            assert connection.sock.recv(1) == b""
        finally:
            connection.close()
    finally:
        srv.stop()
