"""Where an engine environment's packages come from: on a CPU machine the locks pin torch's CPU
build, which PyPI lacks; PyTorch's CPU index is added only where no wheel folder holds it. On a
GPU machine the CUDA locks take torch's CUDA build whatever wheel folders hold; which platform's
locks a server takes can be named; a build's progress counts uv's downloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from uv import find_uv_bin

from inferd.envs import EnvBuilder
from inferd.errors import InvalidRequest
from inferd.runtime.engine_env import EngineEnvs
from inferd.settings import Settings

TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def sources(tmp_path: Path, engine: str, **builder: object) -> list[str]:
    envs = EnvBuilder(tmp_path / "envs", **{"torch_index": TORCH_INDEX, **builder})  # type: ignore[arg-type]
    plan = envs.plan(engine, "cpu")
    return envs._sources(plan, tmp_path)


def test_torch_cpu_build_comes_from_pytorch_where_no_folder_holds_it(tmp_path: Path) -> None:
    args = sources(tmp_path, "sentence_transformers")
    assert args[args.index("--index") + 1] == TORCH_INDEX
    assert args[args.index("--index-strategy") + 1] == "unsafe-best-match"

    # A folder holding it (as pip's find-links does on CI machines) is enough.
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").touch()
    assert "--index" not in sources(tmp_path, "transformers", find_links=[str(folder)])
    # An empty folder is not.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "--index" in sources(tmp_path, "diffusers", find_links=[str(empty)])


def test_no_torch_index_where_it_is_not_wanted(tmp_path: Path) -> None:
    assert "--index" not in sources(tmp_path, "llama.cpp")  # no torch in the lock
    assert "--index" not in sources(tmp_path, "piper")
    for kept_off in ({"index_url": "none"}, {"offline": True}, {"torch_index": None}):
        args = sources(tmp_path, "sentence_transformers", **kept_off)
        assert "--index" not in args, kept_off


TORCH_ENGINES = ("sentence_transformers", "transformers", "diffusers", "vllm")


def test_cuda_machines_take_torchs_cuda_build_whatever_the_wheel_folders_hold(
    tmp_path: Path,
) -> None:
    """A GPU machine's locks are installed as uv will install them (a dry run against the real
    index): torch is the CUDA build even where a wheel folder holds the CPU one, which
    `torch==2.13.0` would accept (a local version), and no PyTorch CPU index is added."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    venv = tmp_path / "venv"
    subprocess.run([find_uv_bin(), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    envs = EnvBuilder(tmp_path / "envs", find_links=[str(folder)], torch_index=TORCH_INDEX)
    for engine in TORCH_ENGINES:
        plan = envs.plan(engine, "cuda")
        assert plan.lock is not None and "-cuda" in plan.lock.name, engine
        args = envs._sources(plan, tmp_path)
        assert "--index" not in args
        dry = [
            find_uv_bin(),
            "pip",
            "install",
            "--dry-run",
            "--python",
            str(venv / "bin" / "python"),
        ]
        ran = subprocess.run([*dry, *args], capture_output=True, text=True, timeout=300)
        assert ran.returncode == 0, ran.stderr[-2000:]
        torch = [line for line in ran.stderr.splitlines() if line.strip().startswith("+ torch==")]
        assert torch == [" + torch==2.13.0"], (engine, torch)


def test_the_platform_engine_environments_take_can_be_named(tmp_path: Path) -> None:
    def found() -> str:
        return "cuda"

    for chosen, expected in (("auto", "cuda"), ("cpu", "cpu"), ("cuda", "cuda")):
        settings = Settings(home=tmp_path, engine_platform=chosen)  # type: ignore[arg-type]
        assert EngineEnvs(settings, False, found).platform() == expected


def test_a_builds_progress_counts_what_uv_downloads() -> None:
    """uv's own lines (as it printed them building the CUDA lock of sentence-transformers)
    become "downloaded X of Y": the minutes before anything is in place say how far they are."""
    from inferd.envs.builder import _Downloads

    downloads = _Downloads()
    assert downloads.report() == ""
    for line in (
        "Resolved 89 packages in 472ms",
        "Downloading nvidia-cublas (403.5MiB)",
        "Downloading torch (502.2MiB)",
        "Downloading kernels (2.5MiB)",
        "Downloading nvidia-cufile (1.2MiB)",
        " Downloaded nvidia-cufile",
        " Downloaded kernels",
    ):
        downloads.hear(line)
    assert downloads.report() == "; downloaded 4 MB of 954 MB (2 of 4 files)"
    for line in (
        " Downloaded torch",
        " Downloaded nvidia-cublas",
        "Prepared 23 packages in 13.67s",
    ):
        downloads.hear(line)
    assert downloads.report() == "; downloaded 954 MB of 954 MB (4 of 4 files)"


def test_gpu_machines_take_piper_s_cpu_lock_and_no_other(tmp_path: Path) -> None:
    """Piper runs on the CPU on GPU machines too, so its CPU lock serves them; an engine whose
    CPU lock would put a CPU build where a GPU one belongs (llama.cpp) asks for a version."""
    envs = EnvBuilder(tmp_path / "envs")
    piper = envs.plan("piper", "cuda")
    assert piper.lock is not None and piper.lock == envs.plan("piper", "cpu").lock
    with pytest.raises(InvalidRequest, match=r"no tested version of llama\.cpp .* cuda machines"):
        envs.plan("llama.cpp", "cuda")


def test_whisper_on_gpu_machines_takes_cublas_from_nvidias_wheel(tmp_path: Path) -> None:
    """faster-whisper's CUDA lock installs as uv will install it (a dry run against the real
    index): CTranslate2 with the cuBLAS 12 it opens on a GPU, from NVIDIA's wheel."""
    venv = tmp_path / "venv"
    subprocess.run([find_uv_bin(), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    envs = EnvBuilder(tmp_path / "envs")
    plan = envs.plan("faster_whisper", "cuda")
    assert plan.lock is not None and plan.lock.name == "faster_whisper-1.2.1-cuda.txt"
    dry = [find_uv_bin(), "pip", "install", "--dry-run", "--python", str(venv / "bin" / "python")]
    ran = subprocess.run(
        [*dry, *envs._sources(plan, tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    installs = {line.strip().split("==")[0] for line in ran.stderr.splitlines()}
    assert {"+ ctranslate2", "+ faster-whisper", "+ nvidia-cublas-cu12"} <= installs


def test_a_library_from_an_nvidia_wheel_is_what_a_lookup_by_name_finds(tmp_path: Path) -> None:
    """What an engine that opens CUDA's libraries by name (CTranslate2: `libcublas.so.12`)
    then gets: the copy in a wheel's `nvidia/PACKAGE/lib`, which the loader's own search never
    looks in. A library built here stands in for cuBLAS."""
    name = "libinferdprobe.so.1"
    wheel = tmp_path / "site" / "nvidia" / "probe" / "lib"
    wheel.mkdir(parents=True)
    source = tmp_path / "probe.c"
    source.write_text("int probe(void) { return 42; }\n")
    build = ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(wheel / name)]
    subprocess.run([*build, str(source)], check=True)
    script = f"""
import ctypes, sys
try:
    ctypes.CDLL({name!r})
    sys.exit("found without the wheel")
except OSError:
    pass
sys.path.insert(0, {str(tmp_path / "site")!r})
from inferd.engines import nvidia_libs
assert nvidia_libs.load("absent", {name!r}) is None
print(nvidia_libs.load("probe", {name!r}))
print(ctypes.CDLL({name!r}).probe())  # as an engine opens it: by name
"""
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(wheel / name), "42"]
