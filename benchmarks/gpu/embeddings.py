"""Embeddings and rerank on a GPU: inferd against sentence-transformers alone, same GPU, one run.

The models are random-weight BERTs built here in the shapes people serve (weights' values do not
change the speed): all-MiniLM-L6-v2's and bge-large-en-v1.5's (embedding: mean pooling,
normalised) and ms-marco-MiniLM-L6-v2's and bge-reranker-large's (cross-encoders), with a WordPiece
vocabulary of 30,522 entries made here, so nothing comes from a hub.

An embedding request embeds one text; a rerank request ranks `--docs` texts against a 12-word
query. Texts are `--words` words long (a query-sized and a chunk-sized length by default).

- sentence-transformers alone, in this process: `encode`/`predict` on one request's worth (what a
  single client gets) and on 32 and 64 requests' worth at once; the better of the two batched
  rates is what inferd at 32 clients is held against (the issue's bar: 0.8x).
- inferd: `inferd serve`, each folder registered as Xinference users do, launched on the GPU,
  then 1 and 32 clients in a closed loop (clients spread over processes), and 32 clients sending
  `--lists` texts a request, one model at a time. At 32 clients it also reports the cores each
  of the server's processes kept busy, the CPU a request cost each, the inputs the model's
  passes held and the share of the load's time a pass was in flight (`busy`; py-spy's stacks
  too, with `--spy-dir`). `--src LABEL=DIR`, repeated, measures
  several sources of inferd one after another on the same machine; `--api-processes 1,4` each
  with one and with four API processes (`inferd serve --api-processes`); `--direct` adds 32
  clients sending straight to the model process in frames, as the fronts do (what the model
  process takes without the server, the fronts and HTTP);
  `--replicas 1,2` each with that many model processes behind the model's uid, on the one GPU;
  `--loads 3` runs the 32-client load three times in each server (each reported, with the cores
  each thread of each process kept busy; the median in the table); `--rounds 2` starts two
  servers of each source, in turns (a, b, a, b), and adds each source's median over them.
  `--trace DIR` records each model process's timeline (frames in and out, the model thread's
  stages: `trace/sitecustomize.py`), which `trace_report.py` breaks down load by load.
  `--clients 64,128` adds a load of that many clients (one text a request) after the 32-client
  ones, and a table of them: at 32 clients of one text each the rate is 32 over a request's
  round trip, and more clients say how near the model's own ceiling a server gets.
  `--compile 0,1` launches each model without and with `compile` (TorchInductor) in turn.

    python benchmarks/gpu/embeddings.py [--seconds 8] [--words 12,200] [--docs 8] [--models ...]
        [--lists 32] [--dtype float16] [--spy-dir DIR] [--src before=DIR --src after=DIR]
        [--api-processes 1,4] [--replicas 1,2] [--direct] [--loads 3] [--rounds 2] [--trace DIR]
        [--clients 64,128] [--compile 0,1]

Answers are checked against sentence-transformers' before the loads (one request at a time)
and after them (many at once, so passes overlap): `max_abs_diff_from_st[_at_once]`.

Prints one JSON line per measurement and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(1, str(ROOT / "benchmarks" / "gpu"))
# This checkout's frames (`--direct` speaks them as a front does), whichever `--src` is served.
sys.path.insert(2, str(ROOT / "src"))
from compare import Rate, closed_loop  # noqa: E402
from watch import Watch  # noqa: E402

from inferd.runtime.frames import frames_path  # noqa: E402

# name: (kind, layers, hidden, heads, intermediate, max tokens)
SHAPES = {
    "bench-minilm-l6": ("embedding", 6, 384, 12, 1536, 256),
    "bench-bge-large": ("embedding", 24, 1024, 16, 4096, 512),
    "bench-minilm-l6-reranker": ("rerank", 6, 384, 12, 1536, 512),
    "bench-bge-reranker-large": ("rerank", 24, 1024, 16, 4096, 512),
    # Not a shape people serve: a model whose passes cost next to nothing, so what a request
    # costs inferd's own processes (the relay) is what is measured, even on a CPU.
    "bench-tiny": ("embedding", 1, 32, 2, 64, 256),
}
VOCAB = 30522
WORDS = " ".join(
    (
        "the of and to in is that for it as with was on be by at this from or an are which have",
        "not has but were they had their been one all can would more will there if its about so",
        "model server memory request answer engine token batch query document river city water",
        "light music paper system market energy policy health science history language network",
    )
).split(" ")
JSON = {"Content-Type": "application/json"}


def say(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -- models -------------------------------------------------------------------------------


def vocabulary(folder: Path) -> Path:
    """A WordPiece vocabulary: BERT's special tokens, the words used here, letters and
    word-pieces of letters, filled to BERT's size."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters]
    tokens += [f"##{t}" for t in letters] + [".", ",", "?"]
    tokens += [f"[unused{i}]" for i in range(VOCAB - len(tokens))]
    path = folder / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return path


def build(name: str, root: Path) -> Path:
    """A sentence-transformers (or cross-encoder) folder of `name`'s shape, random weights."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    kind, layers, hidden, heads, intermediate, max_tokens = SHAPES[name]
    folder = root / name
    folder.mkdir(parents=True)
    tokenizer = BertTokenizerFast(vocab_file=str(vocabulary(root)), model_max_length=max_tokens)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    if kind == "rerank":
        config.num_labels = 1
        BertForSequenceClassification(config).eval().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    from sentence_transformers import SentenceTransformer, models

    BertModel(config).eval().save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    encoder = models.Transformer(str(folder / "bert"), max_seq_length=max_tokens)
    pooling = models.Pooling(hidden, pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling, models.Normalize()]).save(str(folder))
    return folder


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


# -- sentence-transformers alone ----------------------------------------------------------


def rate(call: Callable[[], Any], items: int, seconds: float) -> float:
    """Items a second over repeated calls, after two calls of warm-up."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    call(), call()
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        n += items
    sync()
    return n / (time.perf_counter() - start)


def alone(
    name: str, folder: Path, words: int, docs: int, seconds: float, device: str, dtype: str | None
) -> dict[str, float]:
    """Requests a second: one request at a time, and 32 or 64 requests' worth per call."""

    rng = random.Random(1)
    out: dict[str, float] = {}
    if SHAPES[name][0] == "embedding":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device=device, model_kwargs=weights(dtype))
        texts = [text(rng, words) for _ in range(64)]
        out["single"] = rate(lambda: model.encode(texts[:1]), 1, seconds)
        for n in (32, 64):
            out[f"batch{n}"] = rate(lambda n=n: model.encode(texts[:n], batch_size=n), n, seconds)
    else:
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(folder), device=device, model_kwargs=weights(dtype))
        query = text(rng, 12)
        pairs = [(query, text(rng, words)) for _ in range(64 * docs)]
        out["single"] = rate(lambda: model.predict(pairs[:docs], batch_size=docs), 1, seconds)
        for n in (32, 64):
            size = n * docs
            out[f"batch{n}"] = rate(
                lambda size=size: model.predict(pairs[:size], batch_size=min(size, 256)),
                n,
                seconds,
            )
    return out


def weights(dtype: str | None) -> dict[str, Any] | None:
    """sentence-transformers' `model_kwargs` for `--dtype` (inferd's launch option of that name)."""
    return {"dtype": dtype} if dtype else None


def reference(name: str, folder: Path, device: str, dtype: str | None) -> list[Any]:
    """sentence-transformers' own answers for `checked_texts`: their vectors, or the scores of
    each against the first as the query."""
    texts = checked_texts()
    if SHAPES[name][0] == "embedding":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device=device, model_kwargs=weights(dtype))
        return model.encode(texts).tolist()
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device=device, model_kwargs=weights(dtype))
    return model.predict([(texts[0], t) for t in texts]).tolist()


def checked_texts() -> list[str]:
    rng = random.Random(3)
    return [text(rng, words) for words in (3, 12, 40, 120, 200, 300)]


# -- inferd -------------------------------------------------------------------------------


def answer(base: str, name: str, text: str) -> Any:
    """inferd's answer for one of `checked_texts`, as `reference` gives it: the text's
    embedding; for a reranker (whatever `text`) the relevance of each checked text to the
    first."""
    if SHAPES[name][0] == "embedding":
        body = {"model": name, "input": text}
        embedded = httpx.post(f"{base}/v1/embeddings", json=body, timeout=120).json()
        return embedded["data"][0]["embedding"]
    texts = checked_texts()
    body = {"model": name, "query": texts[0], "documents": texts}
    ranked = httpx.post(f"{base}/v1/rerank", json=body, timeout=120).json()["results"]
    return [r["relevance_score"] for r in sorted(ranked, key=lambda r: r["index"])]


def answers(base: str, name: str) -> list[Any]:
    """inferd's answers for `checked_texts`, as `reference` gives them: each text in a request
    of its own (each a different padded shape), and all of them in one."""
    texts = checked_texts()
    if SHAPES[name][0] != "embedding":
        return answer(base, name, texts[0])
    together = httpx.post(f"{base}/v1/embeddings", json={"model": name, "input": texts})
    return [answer(base, name, t) for t in texts] + [
        d["embedding"] for d in together.json()["data"]
    ]


def answers_at_once(base: str, name: str, copies: int = 8) -> list[Any]:
    """`answers`' one-text requests (the rerank request), `copies` of each sent at once, in
    that order: passes that overlap on the GPU must still give each request its own answer."""
    texts = checked_texts()
    if SHAPES[name][0] != "embedding":
        texts = texts[:1] * len(texts)  # as many rerank requests, each answering them all
    with ThreadPoolExecutor(len(texts) * copies) as pool:
        got = list(pool.map(lambda text: answer(base, name, text), texts * copies))
    return got if SHAPES[name][0] == "embedding" else [s for scores in got for s in scores]


def deviation(got: list[Any], expected: list[Any]) -> float:
    """The largest absolute difference between inferd's numbers and sentence-transformers'."""
    import numpy as np

    want = np.asarray(expected, dtype=np.float64)
    have = np.asarray(got, dtype=np.float64)
    if have.shape != want.shape:  # copies of the answers (each alone, then the list; at once)
        want = np.concatenate([want] * (have.shape[0] // want.shape[0]))
    return float(np.abs(have - want).max())


def request(
    name: str, words: int, docs: int, texts: int = 0, frames: bool = False
) -> Callable[[Any], Any]:
    """A client's next request: one text to embed (or `texts` of them in a list), or one query
    and `docs` documents to rank; `frames`: sent in frames to the model process (on an
    `inferd.runtime.frames.FrameChannel`, as a front sends it), not to the server over HTTP."""
    rng = random.Random(2)
    if SHAPES[name][0] == "embedding":
        bodies = [
            json.dumps(
                {
                    "model": name,
                    # The model process takes the server's validated body: a list.
                    "input": [text(rng, words) for _ in range(texts or 1)]
                    if texts or frames
                    else text(rng, words),
                }
            ).encode()
            for _ in range(64)
        ]
        path = "/embeddings" if frames else "/v1/embeddings"
    else:
        bodies = [
            json.dumps(
                {
                    "model": name,
                    "query": text(rng, 12),
                    "documents": [text(rng, words) for _ in range(docs)],
                }
            ).encode()
            for _ in range(64)
        ]
        path = "/rerank" if frames else "/v1/rerank"
    turn = iter(range(1 << 62))

    async def send(client: aiohttp.ClientSession) -> tuple[bool, int]:
        async with client.post(path, data=bodies[next(turn) % 64], headers=JSON) as response:
            await response.read()
            return response.status == 200, 0

    async def framed(channel: Any) -> tuple[bool, int]:
        answer = await channel.post(path, bodies[next(turn) % 64], "")
        return answer.status == 200, 0

    return framed if frames else send


def register(base: str, name: str, folder: Path) -> None:
    kind, *_, max_tokens = SHAPES[name]
    spec = {"model_format": "pytorch", "quantization": "none", "model_uri": f"file://{folder}"}
    definition: dict[str, Any] = {
        "version": 2,
        "model_name": name,
        "max_tokens": max_tokens,
        "language": ["en"],
        "model_specs": [spec],
    }
    if kind == "embedding":
        definition["dimensions"] = SHAPES[name][2]
    else:
        definition["type"] = "normal"
    answer = httpx.post(f"{base}/v1/model_registrations/{kind}", json={"model": definition})
    answer.raise_for_status()


def served(
    base: str,
    name: str,
    words_list: list[int],
    docs: int,
    seconds: float,
    watch: Watch,
    lists: int,
    expected: list[Any],
    dtype: str | None,
    direct: bool = False,
    replicas: int = 1,
    loads: int = 1,
    clients: tuple[int, ...] = (),
    compile_: bool = False,
) -> dict[int, dict[str, Rate]]:
    """Rates at 1 and 32 clients sending one text (or rerank request) each, and, for embedding
    models, 32 clients sending `lists` texts a request (counted in texts); the cores each of the
    server's processes kept busy at 32 clients, and what one request cost each of them.
    `direct`: also 32 clients sending to the model process in frames themselves, the server,
    the fronts and HTTP left out (what the model process alone can take). `replicas`: model
    processes behind the uid, on the one GPU. `loads`: 32-client loads one after another, the
    median reported. `clients`: a load of each of these many clients too (one text each).
    `compile_`: launched with `compile` (the model compiled by TorchInductor)."""
    kind = SHAPES[name][0]
    started = time.time()
    answer = httpx.post(
        f"{base}/v1/models",
        json={
            "model_name": name,
            "model_type": kind,
            "replica": replicas,
            **({"dtype": dtype} if dtype else {}),
            **({"compile": True} if compile_ else {}),
        },
        timeout=600,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"launch of {name}: {answer.status_code} {answer.text[:2000]}")
    described = httpx.get(f"{base}/v1/models/{name}").json()
    say({"model": name, "launched_s": round(time.time() - started, 1), "on": described})
    out: dict[int, dict[str, Rate]] = {}
    try:
        say({"model": name, "max_abs_diff_from_st": deviation(answers(base, name), expected)})
        for words in words_list:
            send = request(name, words, docs)
            # Warm-up at full load: the first pass of each shape records its CUDA graph.
            closed_loop(base, {}, 32, 3, send)
            got = out[words] = {"1": closed_loop(base, {}, 1, seconds, send)}
            rates = []
            for load in range(loads):
                before = passes(base, name)
                began = time.perf_counter()
                with watch.during(32, tag=f"-{words}w", threads=True) as cores:
                    rates.append(closed_loop(base, {}, 32, seconds, send))
                took = time.perf_counter() - began
                count, items, beside, busy = (
                    a - b for a, b in zip(passes(base, name), before, strict=True)
                )
                per_request = {
                    process: round(used / rates[-1].per_second * 1e6)
                    for process, used in cores.items()
                }
                say({"model": name, "words": words, "clients": 32, "load": load,
                     "per_s": round(rates[-1].per_second, 1), "cores": cores,
                     "cpu_us_a_request": per_request,
                     "inputs_a_pass": round(items / count, 1) if count else None,
                     "passes": count, "beside_another": beside,
                     "busy": round(busy / took, 3),
                     "window": [began, began + took]})  # fmt: skip
            # The median load: the same server settles at different rates from one load to
            # the next (`--loads`).
            got["32"] = sorted(rates, key=lambda r: r.per_second)[len(rates) // 2]
            if direct:
                socket = frames_path(model_socket(watch))
                own = request(name, words, docs, frames=True)
                began = time.perf_counter()
                with watch.during(32, tag=f"-{words}w-direct", threads=True) as cores:
                    got["direct"] = closed_loop(base, {}, 32, seconds, own, frames=socket)
                say({"model": name, "words": words, "clients": 32, "direct": True,
                     "cores": cores,
                     "window": [began, time.perf_counter()]})  # fmt: skip
            for count in clients:
                closed_loop(base, {}, count, 2, send)  # the shapes of larger passes, captured
                got[f"{count} clients"] = closed_loop(base, {}, count, seconds, send)
            if kind == "embedding" and lists:
                many = request(name, words, docs, texts=lists)
                closed_loop(base, {}, 32, 2, many)
                rated = closed_loop(base, {}, 32, seconds, many)
                got["lists"] = replace(rated, per_second=rated.per_second * lists)
            for load, r in got.items():
                say({"server": "inferd", "model": name, "words": words, "load": load,
                     "per_s": round(r.per_second, 1), "p50_ms": round(r.p50 * 1e3, 2),
                     "p99_ms": round(r.p99 * 1e3, 2), "errors": r.errors})  # fmt: skip
        # After the loads, every shape's graphs captured: requests at once share passes and
        # passes overlap, and each must still get its own answer.
        at_once = deviation(answers_at_once(base, name), expected)
        say({"model": name, "max_abs_diff_from_st_at_once": at_once})
    finally:
        logs = httpx.get(f"{base}/v1/models/{name}/logs", params={"tail": 400}).text
        lines = logs.splitlines()
        say({"model": name, "graphs": [line for line in lines if "passes of" in line],
             "compiled": [line for line in lines if "compiled for" in line],
             "tokenizing": [line for line in lines if "tokenizing " in line]})  # fmt: skip
        httpx.delete(f"{base}/v1/models/{name}", timeout=120)
    return out


def model_socket(watch: Watch) -> str:
    """The Unix socket the model process serves on: the last word of its command line."""
    for pid in watch.tree():
        with suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"inferd.runtime.worker" in argv:
                return argv[-2].decode() if argv[-1] == b"" else argv[-1].decode()
    raise RuntimeError("no model process found")


def passes(base: str, name: str) -> tuple[float, float, float, float]:
    """The model's forward passes so far, the inputs they held (the batcher's histogram), how
    many were launched while another was still on the device, and the seconds with one in
    flight."""
    found = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("inferd_engine_") and f'model_uid="{name}"' in line:
            found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return (
        found.get("inferd_engine_batch_items_count", 0),
        found.get("inferd_engine_batch_items_sum", 0),
        found.get("inferd_engine_passes_beside_total", 0),
        found.get("inferd_engine_busy_seconds_total", 0),
    )


def start_server(
    home: Path, log: Path, src: Path, api_processes: int = 1, trace: Path | None = None
) -> subprocess.Popen:
    env = {
        **os.environ,
        "INFERD_HOME": str(home),
        "PYTHONPATH": f"{src}:{os.environ.get('PYTHONPATH', '')}",
    }
    if trace is not None:  # the model processes' timelines (trace/sitecustomize.py)
        trace.mkdir(parents=True, exist_ok=True)
        env["INFERD_BENCH_TRACE"] = str(trace)
        env["PYTHONPATH"] = f"{ROOT / 'benchmarks' / 'gpu' / 'trace'}:{env['PYTHONPATH']}"
    argv = [sys.executable, "-m", "inferd", "serve", "--port", "9997", "--log-level", "warning"]
    if api_processes > 1:
        argv += ["--api-processes", str(api_processes)]
    process = subprocess.Popen(
        argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"inferd exited: {log.read_text()[-3000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get("http://127.0.0.1:9997/health", timeout=2).status_code == 200:
                return process
        time.sleep(0.3)
    raise RuntimeError("inferd did not start in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--words", default="12,200")
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--models", default=",".join(s for s in SHAPES if s != "bench-tiny"))
    parser.add_argument("--device", default="cuda", help="cpu: try the script on a machine without")
    parser.add_argument("--lists", type=int, default=32, help="texts a request in the list load")
    parser.add_argument("--dtype", help="weights' precision, both sides (float16, bfloat16)")
    parser.add_argument("--spy-dir", type=Path, help="py-spy's stacks at 32 clients go here")
    parser.add_argument(
        "--trace",
        type=Path,
        help="the model processes' timelines go here (trace/sitecustomize.py; trace_report.py)",
    )
    parser.add_argument(
        "--loads", type=int, default=1, help="32-client loads a server, one after another"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="servers of each source, in turns (a, b, a, b)"
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="also load the model process alone, in frames as a front sends them",
    )
    parser.add_argument(
        "--api-processes",
        default="1",
        help="inferd serve --api-processes, each of these counts in turn (e.g. 1,4)",
    )
    parser.add_argument(
        "--replicas",
        default="1",
        help="model processes a launch runs on the one GPU, each of these counts in turn",
    )
    parser.add_argument(
        "--compile",
        default="0",
        help="1: launch with compile (the model compiled by TorchInductor); 0,1: each in turn",
    )
    parser.add_argument(
        "--clients",
        type=lambda given: [int(n) for n in given.split(",") if n],
        default=[],
        help="more loads of this many clients, one text a request, each in turn (e.g. 64,128)",
    )
    parser.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="inferd's source to measure, once per --src, in order (default: inferd=this tree's)",
    )
    args = parser.parse_args()
    words_list = [int(w) for w in args.words.split(",")]
    names = args.models.split(",")

    import torch

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    say({"gpu": gpu, "torch": torch.__version__})
    root = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    folders = {name: build(name, root / "models") for name in names}

    engine: dict[str, dict[int, dict[str, float]]] = {}
    expected = {name: reference(name, folders[name], args.device, args.dtype) for name in names}
    for name in names:
        for words in words_list:
            measured = alone(
                name, folders[name], words, args.docs, args.seconds, args.device, args.dtype
            )
            engine.setdefault(name, {})[words] = measured
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the model is gone; its memory goes back for inferd
            say({"server": "sentence-transformers", "model": name, "words": words,
                 **{k: round(v, 1) for k, v in measured.items()}})  # fmt: skip

    given = [tuple(given.split("=", 1)) for given in args.src] or [("inferd", str(ROOT / "src"))]
    counts = [int(n) for n in args.api_processes.split(",")]
    replicas = [int(n) for n in args.replicas.split(",")]
    compiles = [bool(int(n)) for n in args.compile.split(",")]
    # Rounds in turn (a, b, a, b): servers of one source differ by up to 60% on one machine.
    runs = [
        (
            label
            + ("" if counts == [1] else f"-x{n}")
            + ("" if replicas == [1] else f"-r{r}")
            + ("-compiled" if c and compiles != [True] else "")
            + ("" if turn == 0 else f"#{turn + 1}"),
            Path(src),
            n,
            r,
            c,
        )
        for turn in range(args.rounds)
        for label, src in given
        for n in counts
        for r in replicas
        for c in compiles
    ]
    ours: dict[str, dict[str, dict[int, dict[str, Rate]]]] = {}
    for label, src, n, r, c in runs:
        ours[label] = measure_inferd(
            root / label, src, folders, expected, words_list, args, n, r, c
        )
    sources = [(label, src) for label, src, *_ in runs]

    unit = {"embedding": "texts/s", "rerank": f"requests/s ({args.docs} docs each)"}
    print(
        "\n| model | words | unit | ST one at a time | ST batched (best of 32, 64) | inferd "
        "| 1 client | ratio | 32 clients | ratio "
        f"| 32 clients, {args.lists} texts a request | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        for words in words_list:
            st = engine[name][words]
            batched = max(st["batch32"], st["batch64"])
            for label, got in _servers(ours, sources, name, words):
                one, many = got["1"].per_second, got["32"].per_second
                listed = (
                    f"{got['lists'].per_second:,.0f} | {got['lists'].per_second / batched:.2f}"
                    if "lists" in got
                    else "- | -"
                )
                print(
                    f"| {name} | {words} | {unit[SHAPES[name][0]]} | {st['single']:,.0f} "
                    f"| {batched:,.0f} | {label} | {one:,.0f} | {one / st['single']:.2f} "
                    f"| {many:,.0f} | {many / batched:.2f} | {listed} |"
                )
                if "direct" in got:
                    straight = got["direct"].per_second
                    print(
                        f"| {name} | {words} | | | {batched:,.0f} | {label}, in frames to the "
                        f"model process | | | {straight:,.0f} | {straight / batched:.2f} | | |"
                    )
            if args.rounds > 1:
                servers = [ours[run].get(name, {}).get(words) for run, _ in sources]
                for source in dict.fromkeys(run.split("#")[0] for run, _ in sources):
                    rates = sorted(
                        measured["32"].per_second
                        for (run, _), measured in zip(sources, servers, strict=True)
                        if run.split("#")[0] == source and measured is not None
                    )
                    if rates:
                        middle = statistics.median(rates)
                        spread = f"{rates[0]:,.0f}-{rates[-1]:,.0f}"
                        print(
                            f"| {name} | {words} | | | {batched:,.0f} | {source}, median of "
                            f"{len(rates)} servers ({spread}) | | | {middle:,.0f} "
                            f"| {middle / batched:.2f} | | |"
                        )
    more = args.clients
    if more:
        print(
            "\n| model | words | ST batched (best of 32, 64) | inferd | 32 clients | ratio | "
            + " | ".join(f"{n} clients | ratio" for n in more)
            + " |"
        )
        print("|---|---|---|---|---|---|" + "---|---|" * len(more))
        for name in names:
            for words in words_list:
                batched = max(engine[name][words]["batch32"], engine[name][words]["batch64"])
                for label, got in _servers(ours, sources, name, words):
                    rates = [got["32"].per_second] + [got[f"{n} clients"].per_second for n in more]
                    cells = " | ".join(f"{rate:,.0f} | {rate / batched:.2f}" for rate in rates)
                    print(f"| {name} | {words} | {batched:,.0f} | {label} | {cells} |")


def _servers(
    ours: dict[str, dict[str, dict[int, dict[str, Rate]]]],
    sources: list[tuple[str, Path]],
    name: str,
    words: int,
) -> list[tuple[str, dict[str, Rate]]]:
    """Each server's rates for `name` at `words`, in the order they ran (those it measured)."""
    found = [(label, ours[label].get(name, {}).get(words)) for label, _ in sources]
    return [(label, got) for label, got in found if got is not None]


def measure_inferd(
    root: Path,
    src: Path,
    folders: dict[str, Path],
    expected: dict[str, list[Any]],
    words_list: list[int],
    args: argparse.Namespace,
    api_processes: int = 1,
    replicas: int = 1,
    compile_: bool = False,
) -> dict[str, dict[int, dict[str, Rate]]]:
    """One server started from `src` (with `api_processes`): each model registered,
    launched (with `replicas` processes, compiled where `compile_`), measured, terminated."""
    root.mkdir(parents=True)
    say({"inferd": root.name, "src": str(src)})
    log = root / "inferd.log"
    trace = args.trace / root.name if args.trace else None
    server = start_server(root / "home", log, src, api_processes, trace)
    ours: dict[str, dict[int, dict[str, Rate]]] = {}
    try:
        for name, folder in folders.items():
            register("http://127.0.0.1:9997", name, folder)
            spy_dir = args.spy_dir / root.name if args.spy_dir else None
            watch = Watch(name, server.pid, {32} if spy_dir else set(), spy_dir)
            try:
                ours[name] = served(
                    "http://127.0.0.1:9997",
                    name,
                    words_list,
                    args.docs,
                    args.seconds,
                    watch,
                    args.lists,
                    expected[name],
                    args.dtype,
                    args.direct,
                    replicas,
                    args.loads,
                    tuple(args.clients),
                    compile_,
                )
            except RuntimeError as exc:
                say({"model": name, "error": str(exc)})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    say({"src": str(src), "inferd_log_tail": log.read_text(errors="replace")[-3000:]})
    return ours


if __name__ == "__main__":
    main()
