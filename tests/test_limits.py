"""Request bodies over the server's limit are refused with a 413, whether their size is announced
or they arrive in chunks; bodies under it go through untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator

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
