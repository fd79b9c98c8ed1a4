"""Paths a client names are confined to INFERD_ALLOWED_PATHS (after `..` and links are
resolved), and a model's own code runs only when a launch asks for it in so many words."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMBEDDING, InferdServer, local_llm

pytestmark = pytest.mark.slow

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def folders(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    allowed = tmp_path_factory.mktemp("allowed")
    inside = allowed / "tiny"
    shutil.copytree(tiny_llama, inside)
    outside = tmp_path_factory.mktemp("outside") / "tiny"
    shutil.copytree(tiny_llama, outside)
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    return {"allowed": allowed, "inside": inside, "outside": outside}


@pytest.fixture(scope="module")
def confined(
    folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferdServer]:
    srv = InferdServer(
        tmp_path_factory.mktemp("inferd-confined"),
        env={"INFERD_ALLOWED_PATHS": str(folders["allowed"])},
    )
    yield srv
    srv.stop()


def register(server: InferdServer, name: str, path: str) -> httpx.Response:
    definition = local_llm(name, Path(path), TEMPLATE)
    definition["model_specs"][0]["model_uri"] = path  # as given, `..` and all
    return httpx.post(
        f"{server.url}/v1/model_registrations/LLM",
        json={"model": json.dumps(definition), "persist": False},
        timeout=30,
    )


def test_registrations_are_confined(confined: InferdServer, folders: dict[str, Path]) -> None:
    assert register(confined, "inside", str(folders["inside"])).status_code == 200
    escapes = {
        "outside": str(folders["outside"]),
        "dotdot": f"{folders['allowed']}/../{folders['outside'].parent.name}/tiny",
        "link": str(folders["allowed"] / "link"),
    }
    for name, path in escapes.items():
        response = register(confined, name, path)
        assert response.status_code == 403, (name, response.text)
        error = response.json()["error"]
        assert error["param"] == "model_specs[0].model_uri", error
        assert "INFERD_ALLOWED_PATHS" in error["message"]
    names = {
        m["model_name"] for m in httpx.get(f"{confined.url}/v1/model_registrations/LLM").json()
    }
    assert "inside" in names and not names & set(escapes)


def test_launch_paths_are_confined(confined: InferdServer, folders: dict[str, Path]) -> None:
    launches = {
        "model_path": {"model_name": "inside", "model_path": str(folders["outside"])},
        "peft_model_config.lora_list.0.local_path": {
            "model_name": "inside",
            "peft_model_config": {
                "lora_list": [{"lora_name": "x", "local_path": str(folders["allowed"] / "link")}]
            },
        },
    }
    for param, body in launches.items():
        response = httpx.post(f"{confined.url}/v1/models", json=body, timeout=30)
        assert response.status_code == 403, (param, response.text)
        assert response.json()["error"]["param"] == param
    assert confined.models() == {}


def test_trust_remote_code_must_be_said_plainly(confined: InferdServer) -> None:
    error = confined.refused_launch(
        model_name=EMBEDDING,
        model_type="embedding",
        model_uid="trusting",
        trust_remote_code="maybe",
    )
    assert error["param"] == "trust_remote_code" and "true or false" in error["message"]
