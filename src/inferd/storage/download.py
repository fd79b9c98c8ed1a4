"""Fetching weights from a model hub into the cache: only the files a launch needs, resumable,
verified against the hub's sizes and checksums, with progress.

Hugging Face goes through `huggingface_hub` (mirrors via HF_ENDPOINT); ModelScope through the
`modelscope` package when it is installed.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import queue
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import httpx

from inferd.catalog.schema import ModelSpec
from inferd.errors import InvalidRequest, ModelFilesUnavailable

log = logging.getLogger("inferd.download")

COMPLETE_MARK = ".inferd-complete"
PARTIAL_SUFFIX = ".inferd-partial"
_CONFIG_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "*/*.json", "*.jinja")
_WEIGHT_FORMATS = ("*.safetensors",)
_SKIP = ("*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel", "*.pt")


@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files carry one; small git files only a size


@dataclass
class DownloadProgress:
    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    hub: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def speed(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        speed = self.speed
        return (self.total - self.done) / speed if speed > 0 and self.total else None

    def as_dict(self) -> dict[str, object]:
        return {
            "hub": self.hub,
            "bytes": self.done,
            "total_bytes": self.total,
            "speed_bytes_per_s": round(self.speed),
            "eta_s": None if self.eta is None else round(self.eta, 1),
            "notes": self.notes,
        }


def select_files(files: list[RemoteFile], spec: ModelSpec, quantization: str) -> list[RemoteFile]:
    """Only what this launch loads: one GGUF quantization (with its split parts), or the
    safetensors weights and their configs, never the repo's other formats."""
    if spec.model_format == "ggufv2":
        name = spec.file_name(quantization)
        if name is None:
            raise InvalidRequest("this GGUF spec names no file template", param="model_format")
        stem = name[: -len(".gguf")]
        chosen = [
            f
            for f in files
            if f.path == name
            or fnmatch.fnmatch(f.path, f"{stem}-*-of-*.gguf")
            or fnmatch.fnmatch(f.path, f"*/{stem}-*-of-*.gguf")
        ]
        if not chosen:
            # Hubs differ in case: Q4_K_M vs q4_k_m.
            chosen = [f for f in files if f.path.lower() == name.lower()]
        if chosen:  # the vision projectors go beside the weights
            chosen += [f for f in files if f.path in spec.multimodal_projectors]
        return chosen
    has_safetensors = any(fnmatch.fnmatch(f.path, "*.safetensors") for f in files)
    weights = _WEIGHT_FORMATS if has_safetensors else ("*.bin",)
    wanted = (*_CONFIG_PATTERNS, *weights)
    return [
        f
        for f in files
        if any(fnmatch.fnmatch(f.path, p) for p in wanted)
        and not any(fnmatch.fnmatch(f.path, p) for p in _SKIP)
    ]


class Hub(Protocol):
    """A model hub: lists a repo's files and fetches one into a partial file, resumably."""

    name: str

    def list_files(self, repo_id: str) -> list[RemoteFile]: ...

    def fetch(self, repo_id: str, file: RemoteFile, partial: Path, sink: Received) -> None: ...


class HuggingFaceHub:
    name = "huggingface"

    def __init__(self, endpoint: str | None = None):
        from huggingface_hub import HfApi

        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT")
        self.api = HfApi(endpoint=self.endpoint)

    def list_files(self, repo_id: str) -> list[RemoteFile]:
        from huggingface_hub import constants
        from huggingface_hub.hf_api import RepoFile

        _reachable(self.endpoint or constants.ENDPOINT)

        return [
            RemoteFile(f.path, f.size, f.lfs.sha256 if f.lfs else None)
            for f in self.api.list_repo_tree(repo_id, recursive=True)
            if isinstance(f, RepoFile)
        ]

    def fetch(self, repo_id: str, file: RemoteFile, partial: Path, sink: Received) -> None:
        # huggingface_hub resolves the file (mirrors, redirects to LFS storage, auth); the bytes
        # come through our own ranged GET, because its downloader restarts interrupted files
        # from zero and we resume them.
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(repo_id, file.path, endpoint=self.endpoint)
        meta = get_hf_file_metadata(url, retry_on_errors=True)
        headers = build_hf_headers()
        if urlsplit(meta.location).netloc != urlsplit(url).netloc:
            headers.pop("authorization", None)  # a storage CDN gets no Hub token
        _ranged_get(meta.location, partial, file.size, headers, sink)


def _reachable(endpoint: str) -> None:
    """Fail at once when a hub cannot be connected to at all: both clients retry a refused or
    blackholed connection for tens of seconds, which would only delay the other hub."""
    parts = urlsplit(endpoint)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # the hop we make
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=5).close()
    except OSError as exc:
        raise ConnectionError(f"cannot connect to {endpoint}: {exc.strerror or exc}") from exc


class Received:
    """Counts and hashes one file's bytes as they arrive, so verifying it needs no second read."""

    def __init__(
        self, progress: DownloadProgress, lock: threading.Lock, cancelled: threading.Event | None
    ):
        self._progress = progress
        self._lock = lock
        self._cancelled = cancelled
        self.digest = hashlib.sha256()

    def __call__(self, chunk: bytes) -> None:
        if self._cancelled is not None and self._cancelled.is_set():
            raise InterruptedError("download cancelled")
        self.digest.update(chunk)
        with self._lock:
            self._progress.done += len(chunk)

    def resume_from(self, partial: Path) -> None:
        """Hash what an earlier attempt wrote (already counted in the progress)."""
        with open(partial, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                self.digest.update(block)

    def start_over(self, dropped: int) -> None:
        self.digest = hashlib.sha256()
        with self._lock:
            self._progress.done -= dropped

    def whole_file(self, path: Path) -> None:
        """A file some other client wrote at once: hash and count it."""
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                self(block)


def _ranged_get(
    url: str, partial: Path, size: int, headers: dict[str, str], sink: Received
) -> None:
    """GET `url` into `partial`, continuing from what an earlier attempt left there."""
    start = partial.stat().st_size if partial.exists() else 0
    if start >= size > 0:
        sink.resume_from(partial)
        return
    request_headers = {**headers, "Accept-Encoding": "identity"}
    if start:
        request_headers["Range"] = f"bytes={start}-"
    with httpx.stream(
        "GET", url, headers=request_headers, follow_redirects=True, timeout=httpx.Timeout(60.0)
    ) as response:
        response.raise_for_status()
        resumed = start > 0 and response.status_code == 206
        if resumed:
            sink.resume_from(partial)
        elif start:
            sink.start_over(start)  # the server ignored the range
        with open(partial, "ab" if resumed else "wb") as f:
            _write_while_reading(response.iter_bytes(1 << 20), f, sink)


def _write_while_reading(chunks: Iterator[bytes], f: BinaryIO, sink: Received) -> None:
    """Write and hash in a second thread while this one reads the socket. SHA-256 releases the
    GIL, so verifying costs no time on top of receiving, where in one thread it would add a
    third to the download."""
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
    failure: list[BaseException] = []

    def drain() -> None:
        try:
            while (chunk := pending.get()) is not None:
                f.write(chunk)
                sink(chunk)
        except BaseException as exc:  # the disk, or a cancel: stop the reader, empty the queue
            failure.append(exc)
            while pending.get() is not None:
                pass

    writer = threading.Thread(target=drain, name="download-writer")
    writer.start()
    try:
        for chunk in chunks:
            if failure:
                break
            pending.put(chunk)
    finally:
        pending.put(None)
        writer.join()
    if failure:
        raise failure[0]


def download(
    spec: ModelSpec,
    quantization: str,
    target_dir: Path,
    preferred_hub: str,
    progress: DownloadProgress,
    cancelled: threading.Event | None = None,
) -> None:
    """Fill `target_dir` with the spec's files from the preferred hub, or the other one if the
    preferred cannot be reached. Partial files stay for the next try to resume."""
    hubs = [preferred_hub] + [h for h in spec.model_hub if h != preferred_hub]
    hubs = [h for h in hubs if h in spec.model_hub]
    if not hubs:
        raise ModelFilesUnavailable(
            f"no hub holds this model; it is known on: {', '.join(spec.model_hub) or 'none'}",
            param="download_hub",
        )
    errors: list[str] = []
    for hub_name in hubs:
        repo = spec.model_hub[hub_name]  # type: ignore[index]
        try:
            hub = _make_hub(hub_name)
            files = hub.list_files(repo)
        except Exception as exc:
            # Unreachable, or the model is not there: the next hub may have it.
            reason = exc.message if isinstance(exc, ModelFilesUnavailable) else str(exc)
            reason = (reason.strip().splitlines() or [type(exc).__name__])[0][:300]
            errors.append(f"{hub_name} ({repo}): {reason}")
            log.warning("cannot use %s for %s: %s", hub_name, repo, reason)
            continue
        chosen = select_files(files, spec, quantization)
        if not chosen:
            errors.append(
                f"{hub_name} ({repo}): none of the files this launch needs "
                f"({spec.file_name(quantization) or 'weights'})"
            )
            continue
        progress.hub = hub_name
        progress.notes = list(errors)  # say why another hub than the preferred one is used
        progress.total = sum(f.size for f in chosen)
        _check_space(target_dir, sum(f.size - _present(target_dir, f) for f in chosen))
        _fetch_all(hub, repo, chosen, target_dir, progress, cancelled)
        (target_dir / COMPLETE_MARK).write_text(hub_name)
        return
    raise ModelFilesUnavailable(
        "could not download the model: "
        + "; ".join(errors)
        + ". Weights you already have can be served with --model-path.",
        param="model_name",
    )


def _check_space(target_dir: Path, needed: int) -> None:
    """Refuse before fetching a byte what the disk cannot hold, rather than fail at 90%."""
    existing = target_dir
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise ModelFilesUnavailable(
            f"not enough disk space: the download needs {_size(needed)} more and "
            f"{existing} has {_size(free)} free; free some (inferd remove-cache NAME) or point "
            "INFERD_HOME at a larger disk",
            param="model_name",
            code="insufficient_storage",
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _make_hub(name: str) -> Hub:
    if name == "huggingface":
        return HuggingFaceHub()
    if name == "modelscope":
        return ModelScopeHub()
    raise InvalidRequest(f"unknown hub {name!r}", param="download_hub")


def _fetch_all(
    hub: Hub,
    repo: str,
    files: list[RemoteFile],
    target_dir: Path,
    progress: DownloadProgress,
    cancelled: threading.Event | None,
) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    progress.done = sum(_present(target_dir, f) for f in files)
    lock = threading.Lock()
    for file in files:
        final = target_dir / file.path
        if final.exists() and final.stat().st_size == file.size:
            continue  # verified before it got its final name
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        sink = Received(progress, lock, cancelled)
        try:
            hub.fetch(repo, file, partial, sink)
        except InterruptedError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                partial.unlink(missing_ok=True)  # no half file left behind on a full disk
                reason = (
                    f"the disk is full (or a file-size limit was reached) writing {file.path}: "
                    f"{exc.strerror}; the partial file was removed"
                )
            else:
                reason = f"downloading {file.path} from {repo} failed: {exc}"
            raise ModelFilesUnavailable(reason, param="model_name") from exc
        size_ok = partial.exists() and partial.stat().st_size == file.size
        if not size_ok or (file.sha256 is not None and sink.digest.hexdigest() != file.sha256):
            partial.unlink(missing_ok=True)
            raise ModelFilesUnavailable(
                f"{file.path} from {repo} does not match the hub's checksum; it was removed "
                "and will be fetched again on the next launch",
                param="model_name",
            )
        partial.replace(final)


def _present(target_dir: Path, file: RemoteFile) -> int:
    """Bytes of this file already on disk, whole or partial."""
    final = target_dir / file.path
    if final.exists():
        return min(final.stat().st_size, file.size)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    return partial.stat().st_size if partial.exists() else 0


class ModelScopeHub:
    """ModelScope through its own client (`pip install modelscope`), which lists the repo and
    names the file URLs (mirrors via MODELSCOPE_ENDPOINT); the bytes come through the same
    resumable, hashed GET as Hugging Face's."""

    name = "modelscope"

    def __init__(self) -> None:
        try:
            from modelscope_hub.api import HubApi
        except ImportError as exc:
            raise ModelFilesUnavailable(
                "downloading from ModelScope needs its client: pip install modelscope",
                param="download_hub",
            ) from exc
        self.api = HubApi()

    def list_files(self, repo_id: str) -> list[RemoteFile]:
        _reachable(self.api.legacy.endpoint)
        return [
            RemoteFile(f.path, f.size, f.sha256 or None)
            for f in self.api.list_repo_files(repo_id, "model")
            if not f.is_dir
        ]

    def fetch(self, repo_id: str, file: RemoteFile, partial: Path, sink: Received) -> None:
        url = self.api.legacy.get_download_url(repo_id, "model", file.path)
        _ranged_get(url, partial, file.size, {}, sink)
