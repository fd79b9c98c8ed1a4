"""Finds the server and calls it; turns its errors into messages for a person."""

from __future__ import annotations

import json
import os
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
    def __init__(self, endpoint: str, timeout: float | None = 30.0):
        self.endpoint = endpoint
        self._http = httpx.Client(base_url=endpoint, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ClientError(
                f"cannot reach an inferd server at {self.endpoint}: is `inferd serve` running? "
                "(-e/--endpoint or INFERD_ENDPOINT point elsewhere)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"the server at {self.endpoint} did not answer in time") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text or response.reason_phrase
            raise ClientError(message)
        return response.json()
