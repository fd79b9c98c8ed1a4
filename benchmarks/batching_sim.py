"""How a batcher's rule for starting a pass shapes 32 clients' rate, simulated (no model, no GPU).

    .venv/bin/python benchmarks/batching_sim.py [--pass-ms 8]

A pass costs the same whatever it holds (short texts on a GPU: the model's Python, not its
arithmetic), and each client sends its next request a while after its answer (`rt`, spread
0.5-1.5x). The rules: `take`, what inferd's DynamicBatcher does (a pass starts with whatever is
queued), and `crowd(share, cap)`, tried for issue 17 and not landed: a pass that would hold fewer
requests than were around at the end of the last one (its own and those queued meanwhile) waits
for the rest until `share` of the last pass's time has gone by since it ended (never more than
`cap`); "backing off", it then skips waiting for 1, 2, 4 ... 64 passes after a wait the crowd
did not fill. Prints requests a second and the mean pass for 32 and for 4 clients.
Results: benchmarks/results/embeddings_h200.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

_POOL = ThreadPoolExecutor(1)


async def serve(
    queue: asyncio.Queue[asyncio.Future[None]],
    rule: tuple[float, float, bool] | None,
    pass_seconds: float,
    sizes: list[int],
) -> None:
    loop = asyncio.get_running_loop()
    crowd, took, free_at = 1, 0.0, 0.0
    skip, backoff = 0, 1  # passes not to wait before, after a wait the crowd did not fill
    while True:
        batch = [await queue.get()]
        while len(batch) < 64 and not queue.empty():
            batch.append(queue.get_nowait())
        if rule is not None and len(batch) < crowd:
            share, cap, learns = rule
            if learns and skip:
                skip -= 1
            else:
                until = free_at + min(took * share, cap)
                while len(batch) < min(crowd, 64):
                    left = until - time.perf_counter()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), left))
                    except asyncio.TimeoutError:
                        break
                if learns:
                    if len(batch) >= crowd:
                        backoff = 1
                    else:
                        skip, backoff = backoff, min(backoff * 2, 64)
        started = time.perf_counter()
        sizes.append(len(batch))
        await loop.run_in_executor(_POOL, time.sleep, pass_seconds)
        for answer in batch:
            answer.set_result(None)
        free_at = time.perf_counter()
        crowd, took = len(batch) + queue.qsize(), free_at - started


async def trial(
    rule: tuple[float, float, bool] | None, rt: float, clients: int, pass_seconds: float
) -> tuple[float, float]:
    queue: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
    sizes: list[int] = []
    server = asyncio.create_task(serve(queue, rule, pass_seconds, sizes))

    async def client(requests: int) -> None:
        await asyncio.sleep(random.random() * 0.01)
        for _ in range(requests):
            answer = asyncio.get_running_loop().create_future()
            await queue.put(answer)
            await answer
            await asyncio.sleep(rt * (0.5 + random.random()))

    started = time.perf_counter()
    await asyncio.gather(*(client(max(15, 500 // clients)) for _ in range(clients)))
    server.cancel()
    return sum(sizes) / (time.perf_counter() - started), sum(sizes) / len(sizes)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pass-ms", type=float, default=8)
    args = parser.parse_args()
    pass_seconds = args.pass_ms / 1000
    rules: dict[str, tuple[float, float, bool] | None] = {
        "take": None,
        "crowd(0.25, 2 ms)": (0.25, 0.002, False),
        "crowd(1, 10 ms)": (1.0, 0.010, False),
        "crowd(1, 10 ms), backing off": (1.0, 0.010, True),
        "crowd(0.5, 10 ms), backing off": (0.5, 0.010, True),
    }
    for rt in (0.0005, 0.0015, 0.004, 0.008):
        cells = []
        for name, rule in rules.items():
            many, many_pass = await trial(rule, rt, 32, pass_seconds)
            few, few_pass = await trial(rule, rt, 4, pass_seconds)
            cells.append(
                f"{name}: 32 clients {many:,.0f}/s ({many_pass:.1f} a pass), "
                f"4 clients {few:,.0f}/s ({few_pass:.1f})"
            )
        print(f"rt {rt * 1e3:.1f} ms | " + " | ".join(cells))


if __name__ == "__main__":
    asyncio.run(main())
