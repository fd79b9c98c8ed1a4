"""Schemathesis over inferd's own OpenAPI document, against the live server with the demo models:
valid and invalid requests for every operation, none of which may get a 5xx, and every 4xx of
inferd's own API in OpenAI's error shape.

CI runs INFERD_FUZZ_EXAMPLES (8 by default) cases per operation and mode; a longer run is the
same test with more, e.g. `INFERD_FUZZ_EXAMPLES=100 pytest --timeout 0 tests/test_fuzz.py`."""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.generation import GenerationMode

from tests.conftest import EMBEDDING, LLM, InferdServer

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("INFERD_FUZZ_EXAMPLES", "8"))
# Enough to pass every limit check, little enough that a fuzzed generation ends quickly.
_SHORT = 4
_LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict", "n")
# The fields that bound an answer, by path: OpenAI's Responses API has its own name for it.
_LIMIT_FIELDS = {"/v1/responses": ("max_output_tokens",)}


def aim_at_demo_models(case: Any, count: int) -> None:
    """Every other case that names a model names a launched one, so the fuzzed fields reach
    the engines rather than stopping at "no such model"; lengths are kept short (an answer
    without a limit runs to the end of the context, a minute of CPU)."""
    body = case.body
    if not isinstance(body, dict) or "model" not in body or count % 2:
        return
    embeds = "embed" in case.path
    body["model"] = EMBEDDING if embeds else LLM
    if case.path.startswith("/api/"):
        if body.get("options") is None:  # null, as Ollama's clients send it: no bound
            body["options"] = {}
        options = body["options"]
        if isinstance(options, dict):
            options.setdefault("num_predict", _SHORT)
    else:
        limits = _LIMIT_FIELDS.get(case.path, ("max_tokens", "max_completion_tokens"))
        if all(body.get(field) is None for field in limits):
            body[limits[0]] = _SHORT
    for holder in (body, body.get("options")):
        if not isinstance(holder, dict):
            continue
        for field in _LENGTH_FIELDS:
            value = holder.get(field)
            # 3620.0 is a JSON integer too, which the server takes as one.
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if number and value > _SHORT:
                holder[field] = _SHORT


def explore(strategy: Any, check: Any, *args: str) -> None:
    """Run `check` on EXAMPLES cases drawn from `strategy` (no shrinking: failures are
    collected, not minimised)."""

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        check(case, *args)

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()  # (an operation without inputs has no invalid form)


def shaped(path: str, payload: Any) -> bool:
    """In the error shape of the API the path belongs to: Anthropic's on /v1/messages, OpenAI's
    elsewhere (Ollama's plain strings on /api/ are not checked)."""
    if path.startswith("/v1/messages"):
        if not isinstance(payload, dict) or payload.get("type") != "error":
            return False
        return isinstance(payload.get("error"), dict) and "message" in payload["error"]
    return openai_shaped(payload)


def openai_shaped(payload: Any) -> bool:
    error = payload.get("error") if isinstance(payload, dict) else None
    return isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)


def test_no_request_gets_a_server_error(launched: InferdServer) -> None:
    schema = schemathesis.openapi.from_url(f"{launched.url}/openapi.json")
    session = requests.Session()
    cases: dict[str, int] = {}
    failures: list[str] = []

    def check(case: Any, label: str, api_path: str) -> None:
        count = cases[label] = cases.get(label, 0) + 1
        aim_at_demo_models(case, count)
        try:
            response = case.call(base_url=launched.url, session=session, timeout=120)
        except requests.RequestException as exc:
            failures.append(f"{label}: {type(exc).__name__}: {exc}\n{case.body!r:.1500}")
            return
        status = response.status_code
        if status >= 500:
            failures.append(f"{label} -> {status}: {response.text[:300]}\n{case.body!r}")
        elif status >= 400 and not api_path.startswith("/api/"):
            # Ollama's paths answer in Ollama's shape, Anthropic's in its; the rest in OpenAI's.
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if not shaped(api_path, payload):
                failures.append(
                    f"{label} -> {status} not in its API's shape: {response.text[:300]}"
                )

    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in GenerationMode:
            explore(operation.as_strategy(generation_mode=mode), check, label, operation.path)

    total = sum(cases.values())
    print(f"schemathesis: {total} cases over {len(cases)} operations, {len(failures)} failures")
    for failure in failures:
        print(failure[:2000])
    assert not failures, "\n\n".join(failures[:20])
    assert len(cases) >= 40 and total >= 8 * len(cases)
    # The server and its models are still there for the next caller.
    client = launched.openai()
    reply = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert reply.choices[0].message.content is not None
    assert {LLM, EMBEDDING} <= set(launched.models())


# What a path-like or pattern-like parameter must survive: absolute and relative paths, glob and
# regex characters, NUL, a name longer than any file system allows, text outside ASCII.
HOSTILE = ["/etc", "*", "..", "../..", "a/b", "[", "?*", "%", "\\", "\x00", "x" * 5000, "名字", " "]


def test_hostile_values_in_every_get_query_and_path_parameter(launched: InferdServer) -> None:
    """Every query and path parameter of every GET, given each hostile value: never a 5xx (the
    random cases above rarely draw a value such as "/etc", which once reached a glob)."""
    spec = httpx.get(f"{launched.url}/openapi.json", timeout=10).json()
    failures: list[str] = []
    tried = 0
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        if get is None:
            continue
        parameters = [p for p in get.get("parameters", []) if p["in"] in ("query", "path")]
        defaults = {p["name"]: _plain_value(p) for p in parameters}
        for parameter in parameters:
            for value in HOSTILE:
                values = {**defaults, parameter["name"]: value}
                url = launched.url + path.format(
                    **{
                        p["name"]: quote(str(values[p["name"]]), safe="")
                        for p in parameters
                        if p["in"] == "path"
                    }
                )
                query = {p["name"]: values[p["name"]] for p in parameters if p["in"] == "query"}
                answer = httpx.get(url, params=query, timeout=30)
                tried += 1
                label = f"GET {path} {parameter['name']}={value[:20]!r}"
                if answer.status_code >= 500:
                    failures.append(f"{label} -> {answer.status_code}: {answer.text[:200]}")
                elif (
                    answer.status_code >= 400
                    and not path.startswith("/api/")
                    and not shaped(path, answer.json())
                ):
                    failures.append(f"{label} -> not OpenAI-shaped: {answer.text[:200]}")
    print(f"{tried} hostile GETs")
    assert tried > 50
    assert not failures, "\n".join(failures[:20])


def _plain_value(parameter: dict) -> Any:
    """An ordinary value for the parameters not under test, so the one under test is reached."""
    schema = parameter.get("schema", {})
    kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
    if "integer" in kinds:
        return 1
    if "boolean" in kinds:
        return "false"
    return LLM
