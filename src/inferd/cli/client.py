"""Finds the server and calls it; turns its errors into messages for a person."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from inferd.settings import Settings

DEFAULT_ENDPOINT = "http://127.0.0.1:9997"


class ClientError(Exception):
    pass


def resolve_endpoint(explicit: str | None, settings: Settings) -> str:
    """-e/--endpoint, then INFERD_ENDPOINT, then the server last started here, then the default."""
    endpoint = explicit or os.environ.get("INFERD_ENDPOINT")
    if not endpoint:
        try:
            endpoint = json.loads(settings.server_record.read_text())["endpoint"]
        except (OSError, ValueError, KeyError):
            endpoint = DEFAULT_ENDPOINT
    assert endpoint is not None
    if "://" not in endpoint:
        endpoint = f"http://{endpoint}"
    return endpoint.rstrip("/")


class Client:
    def __init__(self, endpoint: str, timeout: float | None = 30.0, api_key: str | None = None):
        self.endpoint = endpoint
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=endpoint, timeout=timeout, headers=headers)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._errors():
            response = self._http.request(method, path, **kwargs)
        _raise_for_error(response)
        return response.json()

    def text(self, path: str, **kwargs: Any) -> str:
        with self._errors():
            response = self._http.get(path, **kwargs)
        _raise_for_error(response)
        return response.text

    def stream_text(self, path: str, **kwargs: Any) -> Iterator[str]:
        with self._errors(), self._http.stream("GET", path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_error(response)
            yield from response.iter_text()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot reach an inferd server at {self.endpoint}: is `inferd serve` running? "
                "(-e/--endpoint or INFERD_ENDPOINT point elsewhere)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"the server at {self.endpoint} did not answer in time") from exc


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text or response.reason_phrase
    raise ClientError(message)
