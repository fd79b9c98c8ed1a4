"""API keys, end to end: `inferd serve --auth`, keys made with the real CLI on the server's
INFERD_HOME, and the matrix of who may do what, through httpx, OpenAI's SDK and
xinference-client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from tests.conftest import EMBEDDING, InferdServer, shot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("inferd-auth"), "--auth")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(server: InferdServer) -> dict[str, str]:
    made = {
        "admin": server.create_key("--name", "ops", "--admin"),
        "user": server.create_key("--name", "app", "--models", "minilm"),
        "other": server.create_key("--name", "elsewhere", "--models", "not-minilm"),
    }
    launched = httpx.post(
        f"{server.url}/v1/models",
        json={"model_name": EMBEDDING, "model_type": "embedding", "model_uid": "minilm"},
        headers={"Authorization": f"Bearer {made['admin']}"},
        timeout=120,
    )
    assert launched.status_code == 200, launched.text
    return made


def call(server: InferdServer, method: str, path: str, key: str | None, **kw: object):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kw)


def test_the_server_made_a_first_admin_key_and_keys_are_hashed(
    server: InferdServer, keys: dict[str, str]
) -> None:
    assert "Admin API key (shown once" in server.log()
    listed = {k["name"]: k for k in httpx.get(
        f"{server.url}/v1/keys", headers={"x-api-key": keys["admin"]}, timeout=10
    ).json()}  # fmt: skip
    assert {"admin", "ops", "app", "elsewhere"} <= set(listed)
    assert listed["app"]["models"] == ["minilm"] and not listed["app"]["admin"]
    state = (server.home / "state.db").read_bytes()
    assert keys["user"].encode() not in state  # only hashes are stored
    table = server.cli("keys", "list").stdout
    assert "elsewhere" in table and keys["user"] not in table


def test_no_key_or_a_wrong_key_is_401(server: InferdServer, keys: dict[str, str]) -> None:
    body = {"model": "minilm", "input": ["hi"]}
    for key in (None, "inferd-wrong"):
        response = call(server, "POST", "/v1/embeddings", key, json=body)
        assert response.status_code == 401, response.text
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    # What needs no key: the health check, the web page, whether auth is on.
    assert call(server, "GET", "/health", None).status_code == 200
    assert call(server, "GET", "/", None).status_code == 200
    assert call(server, "GET", "/v1/cluster/auth", None).json() == {"auth": True}


def test_keys_limited_to_models(server: InferdServer, keys: dict[str, str]) -> None:
    body = {"model": "minilm", "input": ["hi"]}
    assert call(server, "POST", "/v1/embeddings", keys["user"], json=body).status_code == 200
    refused = call(server, "POST", "/v1/embeddings", keys["other"], json=body)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "model"
    assert call(server, "GET", "/v1/models", keys["other"]).json()["data"] == []
    assert call(server, "GET", "/v1/models/minilm", keys["other"]).status_code == 403
    seen = call(server, "GET", "/v1/models", keys["user"]).json()["data"]
    assert [m["id"] for m in seen] == ["minilm"]
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["user"], max_retries=0)
    assert len(sdk.embeddings.create(model="minilm", input=["a"]).data[0].embedding) == 384


def test_only_admin_keys_change_the_server(server: InferdServer, keys: dict[str, str]) -> None:
    launch = {"model_name": EMBEDDING, "model_type": "embedding", "model_uid": "second"}
    for path, method, kwargs in (
        ("/v1/models", "POST", {"json": launch}),
        ("/v1/models/minilm", "DELETE", {}),
        ("/v1/model_registrations/LLM", "POST", {"json": {"model": "{}"}}),
        ("/v1/keys", "POST", {"json": {"name": "sneaky", "admin": True}}),
    ):
        response = call(server, method, path, keys["user"], **kwargs)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["type"] == "permission_error"
    assert call(server, "GET", "/v1/keys", keys["user"]).status_code == 403
    made = call(server, "POST", "/v1/keys", keys["admin"], json={"name": "temp"}).json()
    assert made["key"].startswith("inferd-")
    assert call(server, "GET", "/v1/models", made["key"]).status_code == 200
    assert call(server, "DELETE", "/v1/keys/temp", keys["admin"]).status_code == 200
    assert call(server, "GET", "/v1/models", made["key"]).status_code == 401


def test_xinference_client_and_the_cli_send_the_key(
    server: InferdServer, keys: dict[str, str]
) -> None:
    with pytest.raises(RuntimeError):
        RESTfulClient(server.url).list_models()
    xclient = RESTfulClient(server.url, api_key=keys["admin"])
    assert "minilm" in xclient.list_models()
    assert server.cli("list", check=False).returncode == 1
    old = server.env.get("INFERD_API_KEY")
    server.env["INFERD_API_KEY"] = keys["admin"]
    try:
        assert "minilm" in server.cli("list").stdout
    finally:
        if old is None:
            server.env.pop("INFERD_API_KEY")


def test_revoked_keys_stop_working_at_once(server: InferdServer, keys: dict[str, str]) -> None:
    short = server.create_key("--name", "short")
    assert call(server, "GET", "/v1/models", short).status_code == 200
    server.cli("keys", "revoke", "short")
    assert call(server, "GET", "/v1/models", short).status_code == 401
    assert server.cli("keys", "revoke", "short", check=False).returncode == 1


def test_the_web_page_asks_for_a_key(
    browser: Any, server: InferdServer, keys: dict[str, str]
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{server.url}/#/running")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("API key").fill("inferd-not-a-key")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        page.get_by_label("API key").fill(keys["user"])
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator('tr[data-uid="minilm"] td.status')).to_have_text("ready")
        page.get_by_role("button", name="Logs of minilm").click()
        expect(page.get_by_role("dialog")).to_contain_text("ready in")
        shot(page, "11-signed-in-logs")
        page.get_by_role("dialog").get_by_role("button", name="Close").click()
        # A key that is not an admin's cannot terminate: the page says why.
        page.get_by_role("button", name="Terminate minilm").click()
        expect(page.locator("#toast")).to_contain_text("not an admin key")

        # An admin manages keys from the page: make one limited to minilm, then revoke it.
        page.evaluate(f"localStorage.setItem('inferd-api-key', '{keys['admin']}')")
        page.goto(f"{server.url}/#/keys")
        page.get_by_label("Key name").fill("from-the-page")
        page.get_by_label("Models (uids, comma-separated; empty: all)").fill("minilm")
        page.get_by_role("button", name="Create key").click()
        secret = page.locator("#new-key").inner_text()
        assert call(server, "GET", "/v1/models/minilm", secret).status_code == 200
        expect(page.locator('tr[data-key="from-the-page"]')).to_contain_text("minilm")
        shot(page, "12-keys")
        page.get_by_role("button", name="Revoke from-the-page").click()
        expect(page.locator('tr[data-key="from-the-page"]')).to_have_count(0)
        assert call(server, "GET", "/v1/models/minilm", secret).status_code == 401
    finally:
        context.close()


def test_repeated_wrong_keys_are_throttled(server: InferdServer, keys: dict[str, str]) -> None:
    # Runs last: this client is then refused for a minute, whatever key it sends.
    statuses = [call(server, "GET", "/v1/models", f"inferd-{i}").status_code for i in range(12)]
    # Ten wrong keys a minute (earlier tests sent a few) are answered; then the client waits.
    assert statuses[0] == 401 and statuses[-1] == 429 and set(statuses) == {401, 429}
    refused = call(server, "GET", "/v1/models", keys["admin"])
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
