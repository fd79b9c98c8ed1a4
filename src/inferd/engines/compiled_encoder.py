"""An encoder compiled by TorchInductor (`torch.compile`), for its passes on a GPU.

A pass of short texts through a BERT is hundreds of small kernels: between the matrix products
each layer norm, GELU, residual add and attention reshape is a kernel of its own. Compiled, that
pointwise work is fused into fewer kernels (the matrix products stay cuBLAS's). On an H200 the
CUDA graphs `GraphedPasses` captures of the compiled model replayed 18-31% quicker in float32
(bge-large: 1 x 16 tokens 4.56 -> 3.14 ms, 16 x 16 8.05 -> 6.52, 32 x 16 12.20 -> 10.03;
MiniLM-L6: 16 x 16 0.93 -> 0.65), their answers within 1.4e-7 of the eager model's
(`benchmarks/gpu/compile_probe.py`). Inductor's own matrix-product kernels (max-autotune) lost to
cuBLAS's at every float32 shape timed, so they are not asked for.

It is compiled once for any number of rows and tokens (`dynamic=True`: compiled per shape,
bge-large took 43-46 s a shape, and a graph is captured for each of ~100 shapes), at load, by a
pass of one text and one of two (a single row is a compile of its own): the launch takes that
time, not a request, and a pass those compiles do not cover runs eagerly rather than compile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.util import batch_to_device

log = logging.getLogger(__name__)


def compiled(module: torch.nn.Module, samples: Sequence[dict[str, Any]]) -> torch.nn.Module:
    """`module` compiled for any rows and tokens, its compiles done by calling it on each of
    `samples` (a tokenizer's features: one row, then several; moved to the model's device in
    place). Raises what compiling raised."""
    log.info("compiling the model for any rows and tokens (TorchInductor; a minute or two)")
    started = time.perf_counter()
    fast = torch.compile(module, dynamic=True)
    device = next(module.parameters()).device
    # In inference mode, as every pass runs: Dynamo's guards include the grad mode, and a pass
    # in another mode would compile again.
    # And as a plain dict, as every pass calls it (`GraphedPasses`): Dynamo guards on the
    # input's type, and warm-ups of the tokenizer's `BatchEncoding` left every graph's capture
    # to run eagerly.
    with torch.inference_mode():
        for features in samples:
            fast(dict(batch_to_device(features, device)))
    if device.type == "cuda":  # the compiles timed to their end, not their launch
        torch.cuda.synchronize(device)
    # A pass that would need a compile the warm-ups did not make (a guard they did not cover)
    # runs eagerly instead of holding the model thread for as long as a compile takes. For the
    # whole process: a model process holds one model.
    torch.compiler.set_stance("eager_on_recompile")
    log.info("compiled for any rows and tokens in %.1f s", time.perf_counter() - started)
    return fast  # type: ignore[return-value]
