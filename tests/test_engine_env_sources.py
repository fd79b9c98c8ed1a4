"""Where an engine environment's packages come from: on a CPU machine the locks pin torch's CPU
build, which PyPI lacks; PyTorch's CPU index is added only where no wheel folder holds it."""

from __future__ import annotations

from pathlib import Path

from inferd.envs import EnvBuilder

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
