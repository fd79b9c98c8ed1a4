"""A loopback HTTP server that speaks the part of the Hugging Face Hub's and ModelScope's
protocols their clients use to download. Hugging Face: the repo tree, file resolution with ETag
and commit headers, redirects to LFS blobs, Range requests (HF_ENDPOINT points the real
`huggingface_hub` at it). ModelScope: the legacy `/api/v1` file listing with sizes and SHA-256,
and `repo?FilePath=` downloads (MODELSCOPE_ENDPOINT points the real `modelscope` client at it).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_LFS_THRESHOLD = 10_000  # files at least this large are served as LFS blobs, as on the Hub


@dataclass
class HubFile:
    path: str
    source: Path
    size: int = 0
    sha256: str = ""
    corrupt: bool = False

    def __post_init__(self) -> None:
        self.size = self.source.stat().st_size
        digest = hashlib.sha256()
        with open(self.source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.sha256 = digest.hexdigest()

    @property
    def lfs(self) -> bool:
        return self.size >= _LFS_THRESHOLD


@dataclass
class FakeHub:
    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    bytes_per_second: float | None = None  # throttle, to watch progress or interrupt
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, range
    served: dict[str, int] = field(default_factory=dict)  # file path -> bytes sent

    hidden: dict[str, set[str]] = field(default_factory=dict)  # hub -> repos it lacks

    def add_repo(
        self,
        repo: str,
        files: dict[str, Path],
        hubs: tuple[str, ...] = ("huggingface", "modelscope"),
    ) -> None:
        self.repos[repo] = {name: HubFile(name, src) for name, src in files.items()}
        for hub in ("huggingface", "modelscope"):
            if hub not in hubs:
                self.hidden.setdefault(hub, set()).add(repo)

    def _repo(self, hub: str, repo: str) -> dict[str, HubFile] | None:
        return None if repo in self.hidden.get(hub, set()) else self.repos.get(repo)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fetched(self) -> set[str]:
        """The files whose bytes were actually sent (GETs, not HEADs)."""
        return {path for path, sent in self.served.items() if sent > 0}

    # protocol ---------------------------------------------------------------------------

    def _handle(self, req: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.log.append((req.command, path, req.headers.get("Range")))
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "models"]:
            return self._modelscope(req, parts[3:], head)
        if parts[:2] == ["api", "models"] and "tree" in parts:
            at = parts.index("tree")
            return self._tree(req, "/".join(parts[2:at]))
        if "resolve" in parts:
            at = parts.index("resolve")
            repo, name = "/".join(parts[:at]), "/".join(parts[at + 2 :])
            return self._resolve(req, repo, name, head)
        if parts[0] == "lfs-blobs":
            return self._blob(req, parts[1], head)
        self._send(req, 404, b'{"error": "not found"}', {"Content-Type": "application/json"})

    def _modelscope(self, req: BaseHTTPRequestHandler, parts: list[str], head: bool) -> None:
        repo, what = "/".join(parts[:2]), parts[2:]
        files = self._repo("modelscope", repo)
        query = parse_qs(urlparse(req.path).query)
        if files is None:
            body = {"Code": 10010205001, "Message": f"model {repo} not found", "Success": False}
            return self._send(req, 404, json.dumps(body).encode(), {})
        if what == ["repo", "files"]:
            entries = [
                {
                    "Name": f.path.rsplit("/", 1)[-1],
                    "Path": f.path,
                    "Size": f.size,
                    "Sha256": f.sha256,
                    "Type": "blob",
                    "IsLFS": f.lfs,
                }
                for f in files.values()
            ]
            body = {"Code": 200, "Data": {"Files": entries}, "Success": True}
            return self._send(req, 200, json.dumps(body).encode(), {})
        if what == ["repo"] and (name := query.get("FilePath", [""])[0]) in files:
            return self._content(req, files[name], head, {})
        self._send(req, 404, b'{"Code": 404, "Success": false}', {})

    def _tree(self, req: BaseHTTPRequestHandler, repo: str) -> None:
        files = self._repo("huggingface", repo)
        if files is None:
            return self._send(
                req, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}
            )
        entries = []
        for f in files.values():
            entry: dict[str, object] = {
                "type": "file",
                "path": f.path,
                "size": f.size,
                "oid": f.sha256[:40],
            }
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        body = json.dumps(entries).encode()
        self._send(req, 200, body, {"Content-Type": "application/json"})

    def _resolve(self, req: BaseHTTPRequestHandler, repo: str, name: str, head: bool) -> None:
        file = (self._repo("huggingface", repo) or {}).get(name)
        if file is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
            return self._send(req, 404, b"{}", headers)
        if file.lfs:
            headers = {
                # Another host name for the same server, as the Hub sends LFS to its CDN.
                "Location": f"{self.url.replace('127.0.0.1', 'localhost')}/lfs-blobs/{file.sha256}",
                "X-Repo-Commit": COMMIT,
                "X-Linked-Etag": f'"{file.sha256}"',
                "X-Linked-Size": str(file.size),
                "ETag": f'"{file.sha256[:40]}"',
            }
            return self._send(req, 302, b"", headers)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{file.sha256[:40]}"'}
        self._content(req, file, head, headers)

    def _blob(self, req: BaseHTTPRequestHandler, sha: str, head: bool) -> None:
        for files in self.repos.values():
            for f in files.values():
                if f.sha256 == sha:
                    return self._content(req, f, head, {"ETag": f'"{sha}"'})
        self._send(req, 404, b"", {})

    def _content(
        self, req: BaseHTTPRequestHandler, file: HubFile, head: bool, headers: dict[str, str]
    ) -> None:
        start = 0
        status = 200
        if (rng := req.headers.get("Range")) and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0] or 0)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{file.size - 1}/{file.size}"
        headers["Content-Length"] = str(file.size - start)
        headers["Accept-Ranges"] = "bytes"
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.end_headers()
        if head:
            return
        try:
            for chunk in self._chunks(file, start):
                req.wfile.write(chunk)
                self.served[file.path] = self.served.get(file.path, 0) + len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _chunks(self, file: HubFile, start: int) -> Iterator[bytes]:
        size = 256 * 1024
        with open(file.source, "rb") as f:
            f.seek(start)
            while block := f.read(size):
                if file.corrupt:
                    block = bytes(b ^ 0xFF for b in block[:16]) + block[16:]
                if self.bytes_per_second:
                    time.sleep(len(block) / self.bytes_per_second)
                yield block

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
    ) -> None:
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)
