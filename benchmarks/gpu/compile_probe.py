"""Probe: would an encoder's CUDA graphs run quicker on the GPU with other kernels in them?

On the H200 a bge-large pass of one 12-word text takes its CUDA graph 4.7 ms and one of 16
texts 8.2 ms, where reading the weights once takes 0.3 ms and the arithmetic of 16 x 16 tokens
in float32 about 2.5: the float32 matrix products of a few rows leave most of the GPU idle. A
MiniLM pass of 16 texts takes ~1 ms for ~100 small kernels. Both are what 32 clients of one
short text each wait for. This replays the graphs `GraphedPasses` captures, same model, same
padded shapes, with the kernels chosen four ways:

- `graph`: as inferd does today (PyTorch's eager kernels, cuBLAS's choices);
- `cublaslt`: `torch.backends.cuda.preferred_blas_library("cublaslt")`;
- `compile`: the model `torch.compile`d (TorchInductor: pointwise work fused into fewer
  kernels), then captured;
- `dynamic`: compiled once for any number of rows and tokens (`dynamic=True`), then captured
  per shape as `compile` is;
- `autotune`: compiled with `mode="max-autotune-no-cudagraphs"` (Inductor also times Triton
  matrix-product kernels against cuBLAS's for each shape and keeps the quickest).

Each way runs in a process of its own (a way that hangs or fails leaves the others). For each
model and shape it prints the eager and graphed times `GraphedPasses` measured, how long the
first pass of that shape took (compiling, capturing), and the largest difference of its
embeddings from the eager model's.

    python3 benchmarks/gpu/compile_probe.py [--ways graph,cublaslt,compile,autotune]
        [--models bench-minilm-l6,bench-bge-large] [--rows 1,16,32] [--words 12]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))
sys.path.insert(2, str(HERE.parents[1] / "src"))


def one_way(way: str, models: list[str], rows: list[int], words: int, root: Path) -> None:
    import torch
    from embeddings import build, text
    from sentence_transformers import SentenceTransformer

    from inferd.engines.graphed_passes import GraphedPasses

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    if way == "cublaslt":
        torch.backends.cuda.preferred_blas_library("cublaslt")
    for name in models:
        folder = root / name
        if not folder.exists():
            build(name, root)
        model = SentenceTransformer(str(folder), device="cuda")
        module: torch.nn.Module = model
        if way in ("compile", "autotune", "dynamic"):
            mode = "max-autotune-no-cudagraphs" if way == "autotune" else "default"
            # Each padded shape is compiled for itself (dynamic=False), and the models share
            # BERT's code: past the default limit of 8 Dynamo runs the rest eagerly.
            torch._dynamo.config.recompile_limit = 64
            dynamic = way == "dynamic"  # one compile for every rows x tokens (but 1 row)
            module = torch.compile(model, dynamic=dynamic, mode=mode)  # type: ignore[assignment]
        pad_id = model.tokenizer.pad_token_id
        passes = GraphedPasses(module, "sentence_embedding", pad_id, model.device)
        rng = random.Random(0)
        for n in rows:
            texts = [text(rng, words) for _ in range(n)]
            features = model.tokenize(texts)
            started = time.perf_counter()
            got = passes(features)
            first = time.perf_counter() - started
            with torch.inference_mode():
                on_device = {
                    k: v.to("cuda") if isinstance(v, torch.Tensor) else v
                    for k, v in features.items()
                }
                want = model(on_device)["sentence_embedding"].float().cpu().numpy()
            kept = list(passes._kept.values())
            print(json.dumps({
                "way": way, "model": name, "rows": n, "tokens": int(features["input_ids"].shape[1]),
                "first_pass_s": round(first, 2),
                "graph_ms": round(kept[-1] * 1e3, 3) if kept and kept[-1] is not None else None,
                "max_abs_diff": float(abs(got - want).max()),
            }), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ways", default="graph,cublaslt,compile,autotune")
    parser.add_argument("--models", default="bench-minilm-l6,bench-bge-large")
    parser.add_argument("--rows", default="1,16,32")
    parser.add_argument("--words", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=400)
    parser.add_argument("--way", help=argparse.SUPPRESS)  # one way, in this process
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    rows = [int(n) for n in args.rows.split(",")]
    if args.way:
        one_way(args.way, models, rows, args.words, args.root)
        return
    root = Path(tempfile.mkdtemp(prefix="compile-probe-"))
    for way in args.ways.split(","):
        command = [sys.executable, __file__, "--way", way, "--root", str(root), "--models",
                   args.models, "--rows", args.rows, "--words", str(args.words)]  # fmt: skip
        started = time.perf_counter()
        try:
            done = subprocess.run(command, timeout=args.timeout, check=False)
            outcome = f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            outcome = f"timed out after {args.timeout:.0f} s"
        seconds = time.perf_counter() - started
        say = {"way": way, "outcome": outcome, "seconds": round(seconds, 1)}
        print(json.dumps(say), flush=True)


if __name__ == "__main__":
    main()
