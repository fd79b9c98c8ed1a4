"""Coding agents, unmodified and pinned (tests/agents/package.json; `make test` installs them),
finishing a turn against inferd: Codex CLI over the Responses API, Claude Code over Anthropic's
Messages API. Each sends what it sends a hosted model: its whole system prompt and tool list
(9-12k tokens), streaming, its own headers and fields.

The model is the demo Gemma registered as a tool-calling model (test_tools' template) whose turn
ends at the end of a line or a sentence: a base model does not otherwise end a turn, and an
agent waits for one (and retries an answer cut off by its length). On two CPU cores each prompt
takes a minute or two to read.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import InferdServer, custom_model, gemma_gguf
from tests.test_tools import TEMPLATE

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).parent / "agents" / "node_modules" / ".bin"
TURN_SECONDS = 480


@pytest.fixture(scope="module")
def agent_model(launched: InferdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("w")
    definition = gemma_gguf(
        "gemma-agent",
        folder,
        TEMPLATE,
        ("tools",),
        context_length=32768,
        stop=["<end_of_turn>", "\n", "."],
    )
    # One slot wide enough for an agent's prompt. n_predict caps an answer that never ends; an
    # answer cut there is incomplete, which an agent reports as an error, so the turn also
    # ends at a sentence's end: the model sometimes copies a line of the agent's instructions,
    # and a paragraph's line runs past 64 tokens (seen once in the suite: Codex's ERROR).
    with custom_model(launched, "LLM", definition, n_ctx=16384, n_parallel=1, n_predict=128) as uid:
        yield uid


def agent(name: str) -> str:
    path = AGENTS / name
    assert path.exists(), f"{path} is missing: `make test` installs it (npm ci in tests/agents)"
    return str(path)


def run(command: list[str], home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    work = home / "work"
    work.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    return subprocess.run(
        command,
        cwd=work,
        env={**clean, "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=TURN_SECONDS,
        stdin=subprocess.DEVNULL,
    )


def test_codex_exec_finishes_a_turn(
    launched: InferdServer, agent_model: str, tmp_path: Path
) -> None:
    codex_home = tmp_path / "codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(
        f'model = "{agent_model}"\n'
        'model_provider = "inferd"\n\n'
        "[model_providers.inferd]\n"
        'name = "inferd"\n'
        f'base_url = "{launched.url}/v1"\n'
        'wire_api = "responses"\n'
    )
    done = run(
        [agent("codex"), "exec", "--skip-git-repo-check", "Say hello"],
        tmp_path,
        {"CODEX_HOME": str(codex_home)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ERROR" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.strip(), done.stderr[-3000:]  # the agent's last message: the model's


def test_claude_code_finishes_a_turn(
    launched: InferdServer, agent_model: str, tmp_path: Path
) -> None:
    done = run(
        [agent("claude"), "-p", "Say hello", "--max-turns", "1", "--output-format", "json"],
        tmp_path,
        {
            "ANTHROPIC_BASE_URL": launched.url,
            "ANTHROPIC_API_KEY": "unused",
            "ANTHROPIC_MODEL": agent_model,
            "ANTHROPIC_SMALL_FAST_MODEL": agent_model,
            # Claude Code asks for 32,000 tokens an answer unless told; a request the model's
            # context cannot hold is refused (400), so a user with a smaller model says so.
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "4096",
            "DISABLE_TELEMETRY": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        },
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert done.returncode == 0, result
    assert result["subtype"] == "success" and not result["is_error"], result
    assert result["num_turns"] == 1 and result["stop_reason"] == "end_turn", result
    assert result["result"], result
    assert result["usage"]["input_tokens"] > 5000  # its real system prompt and tools
