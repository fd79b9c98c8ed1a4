"""Probe: do two CUDA graphs of one encoder's pass, replayed on two streams at once, finish
sooner than one after the other? A bge-large-shaped BERT (24 layers x 1024, float32, random
weights), passes of 16 short texts, against one pass of 32.

    python3 benchmarks/gpu/two_streams_probe.py [--seconds 3] [--rows 16] [--tokens 16]

It also prints how long the host's `replay()` call takes with the GPU idle and beside another
stream's running pass (a launch that waits there holds up the model thread's collecting).

What it asks: where a pass of a few short texts leaves the GPU underused (bge-large, 16 x 16
tokens: 8 ms, 32 x 16: 12 ms on an H200), could two passes in flight at once, each with its own
graph and memory, take the alternating halves of 32 clients together?
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    dev = torch.device("cuda")
    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096)  # fmt: skip
    model = BertModel(config).to(dev).eval()

    def graphed(rows: int) -> tuple[torch.cuda.CUDAGraph, torch.cuda.Stream]:
        stream = torch.cuda.Stream()
        ids = torch.randint(1000, 30000, (rows, args.tokens), device=dev)
        mask = torch.ones_like(ids)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode():
            with torch.cuda.stream(stream):
                for _ in range(3):
                    model(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=torch.cuda.graph_pool_handle(), stream=stream):
                model(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1)
        torch.cuda.synchronize()
        return graph, stream

    def rate(run: object, texts: int) -> float:
        end = time.perf_counter() + args.seconds
        done = 0
        while time.perf_counter() < end:
            run()  # type: ignore[operator]
            done += texts
        torch.cuda.synchronize()
        return done / args.seconds

    a, sa = graphed(args.rows)
    b, sb = graphed(args.rows)
    double, sd = graphed(args.rows * 2)

    def serial() -> None:
        for graph, stream in ((a, sa), (b, sb)):
            with torch.cuda.stream(stream):
                graph.replay()
            stream.synchronize()

    launches: list[tuple[float, float]] = []  # host seconds of each replay call: idle, beside

    def together() -> None:
        took = []
        for graph, stream in ((a, sa), (b, sb)):
            with torch.cuda.stream(stream):
                started = time.perf_counter()
                graph.replay()
                took.append(time.perf_counter() - started)
        launches.append((took[0], took[1]))
        sa.synchronize()
        sb.synchronize()

    def one_of_double() -> None:
        with torch.cuda.stream(sd):
            double.replay()
        sd.synchronize()

    rows = args.rows
    print(f"{torch.cuda.get_device_name(0)}, passes of {rows} x {args.tokens} tokens")
    for label, run, texts in (
        (f"two passes of {rows}, one after the other", serial, 2 * rows),
        (f"two passes of {rows} on two streams at once", together, 2 * rows),
        (f"one pass of {2 * rows}", one_of_double, 2 * rows),
    ):
        print(f"{label}: {rate(run, texts):,.0f} texts/s")
    # Whether launching a graph waits on the host while another stream's graph runs (the
    # embedding engine's second pass in flight is launched so): the replay call's own time.
    idle, beside = (statistics.median(times) * 1e3 for times in zip(*launches, strict=True))
    print(f"replay call on the host: {idle:.3f} ms, GPU idle; {beside:.3f} ms beside a pass")


if __name__ == "__main__":
    main()
