"""Telling Python's garbage collector that what a process built while starting stays."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Put every object alive now out of the collector's reach.

    A model process holds hundreds of thousands of long-lived objects (torch's, the engine's,
    the model's modules); a full collection walks them all (~0.25 s with torch and transformers
    imported, on a CI core) and stops the event loop that streams every client's tokens
    meanwhile. Objects made later are collected as usual. vLLM's own server does the same once
    it has started."""
    gc.collect()
    gc.freeze()
