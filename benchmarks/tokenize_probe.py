"""How long the model thread takes to tokenize a pass, alone and beside a busy event loop.

    python benchmarks/tokenize_probe.py [--seconds 2] [--texts 1,4,10,16,32] [--words 12]

An embedding model's process has two threads that share the interpreter lock: the model
thread, which tokenizes each pass (`engines/direct_tokenizer.py`, the tokenizer's batch call)
and runs it, and the event loop's, which reads requests and writes answers. The batch call
gives up the lock and spreads the texts over a pool of threads; the calling thread then waits
to win the lock back, which a busy loop holds for up to a switch interval (the model process's:
0.2 ms). Tokenized one text at a time (`encode` keeps the lock), a pass pays neither but costs
its texts one after another, and keeps the lock from the loop meanwhile. This times both ways
over passes of N texts, with the model process's switch interval, alone and beside a thread
that runs Python 60% of the time in bursts of 0.5 ms (a loop busy with a burst of answers),
and the part left to the model thread had the texts come encoded (stacking them into a pass's
tensors); microseconds a pass, and the ratio batch / one by one (above 1: one by one is
quicker). The tokenizer is MiniLM-L6's (INFERD_TEST_TOKENIZER, or the package the tests use),
checked against transformers' call as sentence-transformers makes it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "src"))

from inferd.engines.direct_tokenizer import DirectTokenizer  # noqa: E402
from tests.tiny_bert import tokenizer_folder  # noqa: E402

WORDS = " ".join(
    (
        "the of and to in is that for it as with was on be by at this from or an are which have",
        "model server memory request answer engine token batch query document river city water",
    )
).split(" ")


def one_by_one(backend: Any, texts: list[str]) -> list[Any]:
    """Each text's encoding on its own (unpadded but for the tokenizer's own rounding)."""
    return [backend.encode(text) for text in texts]


def stacked(backend: Any, encodings: list[Any]) -> dict[str, torch.Tensor]:
    """Encodings padded together, to the longest, as the batch call pads (on the right)."""
    length = max(len(encoding) for encoding in encodings)
    pad = backend.padding["pad_id"]
    features = {}
    for key, field, fill in (("input_ids", "ids", pad), ("attention_mask", "attention_mask", 0)):
        rows = np.full((len(encodings), length), fill, dtype=np.int64)
        for row, encoding in zip(rows, encodings, strict=True):
            values = getattr(encoding, field)
            row[: len(values)] = values
        features[key] = torch.from_numpy(rows)
    return features


def busy_loop(stop: threading.Event, share: float = 0.6, burst: float = 5e-4) -> None:
    """Python work `share` of the time in bursts of `burst` seconds, sleeping between."""
    while not stop.is_set():
        until = time.perf_counter() + burst
        x = 0
        while time.perf_counter() < until:
            x += 1
        time.sleep(burst * (1 - share) / share)


def timed(call: object, seconds: float) -> float:
    """The median microseconds of `call()` over `seconds`."""
    assert callable(call)
    call()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--texts", default="1,4,10,16,32")
    parser.add_argument("--words", type=int, default=12)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())

    def prepare(batch: list[str]) -> dict[str, Any]:  # as sentence-transformers calls it
        return dict(
            tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        )

    direct = DirectTokenizer.verified(prepare, tokenizer)
    assert direct is not None, "MiniLM's tokenizer gives its own features from the backend"
    from tokenizers import Tokenizer

    prepare(["a"])  # leaves the model's truncation and padding on the backend copied here
    backend = Tokenizer.from_str(tokenizer._tokenizer.to_str())
    check = [" ".join(WORDS[: 3 + i]) for i in range(5)]
    want = prepare(check)
    got = stacked(backend, one_by_one(backend, check))
    assert all(torch.equal(got[k], want[k]) for k in got), "one by one, padded together"
    sys.setswitchinterval(0.0002)  # the model process's (runtime/worker.py)
    rng = random.Random(0)
    print(
        "| texts | chars | beside | batch call, µs | one by one, µs | batch / one by one "
        "| stacking encodings made early, µs |"
    )
    print("|---|---|---|---|---|---|---|")
    for count in (int(n) for n in args.texts.split(",")):
        batch = [" ".join(rng.choice(WORDS) for _ in range(args.words)) + "." for _ in range(count)]
        chars = sum(map(len, batch))
        for beside in ("nothing", "a busy loop"):
            stop = threading.Event()
            if beside != "nothing":
                threading.Thread(target=busy_loop, args=(stop,), daemon=True).start()
                time.sleep(0.05)
            try:
                whole = timed(lambda batch=batch: direct(batch), args.seconds)
                single = timed(
                    lambda batch=batch: stacked(backend, one_by_one(backend, batch)), args.seconds
                )
                made = one_by_one(backend, batch)
                stacking = timed(lambda made=made: stacked(backend, made), args.seconds)
            finally:
                stop.set()
            print(
                f"| {count} | {chars} | {beside} | {whole:,.0f} | {single:,.0f} "
                f"| {whole / single:.2f} | {stacking:,.0f} |"
            )


if __name__ == "__main__":
    main()
