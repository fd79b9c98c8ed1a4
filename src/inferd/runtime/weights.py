"""A launch's weights on local disk: found where they are (a local path, the cache), or
downloaded from the hub with the progress shown on the launching model, once however many
launches wait for them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from inferd.errors import ModelFilesUnavailable
from inferd.runtime.instance import ModelInstance
from inferd.settings import Settings
from inferd.storage.download import DownloadProgress, download
from inferd.storage.resolve import cache_dir_for, cached_weights, find_local_weights
from inferd.storage.state import StateStore


class Weights:
    def __init__(self, settings: Settings, store: StateStore):
        self._settings = settings
        self._store = store
        self._download_locks: dict[Path, asyncio.Lock] = {}

    async def local_path(self, instance: ModelInstance) -> Path:
        """The weights of `instance` on local disk, downloading them first if they are not
        (the instance shows the download's progress)."""
        args = (
            instance.family,
            instance.spec,
            instance.quantization,
            self._settings.cache_dir,
            instance.request.model_path,
        )
        path = await asyncio.to_thread(find_local_weights, *args)
        if path is not None:
            return path
        variant = cache_dir_for(
            self._settings.cache_dir,
            instance.family.model_name,
            instance.spec,
            instance.quantization,
        )
        # Two launches of one model download it once: the second waits, then finds it cached.
        lock = self._download_locks.setdefault(variant, asyncio.Lock())
        async with lock:
            path = await asyncio.to_thread(find_local_weights, *args)
            if path is not None:
                return path
            hub = instance.request.download_hub or self._settings.model_src
            instance.download = DownloadProgress(hub=hub)
            instance.set_phase(instance.phase, "downloading")
            self._store.set_status(instance.uid, "downloading")
            instance.notify()
            cancelled = threading.Event()
            try:
                await asyncio.to_thread(
                    download,
                    instance.spec,
                    instance.quantization,
                    variant,
                    hub,
                    instance.download,
                    cancelled,
                )
            except asyncio.CancelledError:
                cancelled.set()  # the thread stops before its next file
                raise
            done = instance.download
            skipped = "".join(f"; skipped {note}" for note in done.notes)
            self._store.add_event(
                instance.uid,
                "downloaded",
                f"{done.done / 1e6:.0f} MB from {done.hub} in "
                f"{time.monotonic() - done.started:.1f}s{skipped}",
            )
            found = cached_weights(variant, instance.spec, instance.quantization)
            if found is None:
                raise ModelFilesUnavailable(
                    f"the download of {instance.family.model_name} finished without the file "
                    "the engine loads",
                    param="model_name",
                )
            return found
