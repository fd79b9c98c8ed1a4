"""Write the locks shipped in `locks/` (a maintainer's tool; needs an index and uv):

    python -m inferd.envs.lock ENGINE VERSION [--platform cpu|cuda] [--python 3.11]
        [--find-links DIR ...]

Each lock pins the engine's package at VERSION, what it needs beside it, and the packages the
model process itself imports (inferd's own dependencies), resolved together for every Python
inferd supports, or for one (`--python`) where a wheel exists for one only: the CPU build of
torch in a wheel folder.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from inferd.envs.specs import SPECS, worker_requirements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=sorted(SPECS))
    parser.add_argument("version")
    parser.add_argument("--platform", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--python", default=None, help="one Python version (x86_64 Linux)")
    parser.add_argument("--find-links", action="append", default=[])
    args = parser.parse_args()
    from uv import find_uv_bin

    spec = SPECS[args.engine]
    wanted = [*spec.requirements(args.version, args.platform), *worker_requirements()]
    name = f"{spec.engine}-{args.version}-{args.platform}"
    command = [find_uv_bin(), "pip", "compile", "-", "--no-header", "--no-annotate", "--quiet"]
    if args.python:
        name += f"-py{args.python.replace('.', '')}"
        command += ["--python-version", args.python, "--python-platform", "x86_64-manylinux_2_28"]
    else:
        command += ["--universal", "--python-version", "3.10"]
    out = Path(__file__).parent / "locks" / f"{name}.txt"
    command += ["-o", str(out)]
    for links in args.find_links:
        command += ["--find-links", links]
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as overrides:
        overrides.write("\n".join(spec.overrides(args.platform)) + "\n")
        overrides.flush()
        command += ["--override", overrides.name]
        subprocess.run(command, input="\n".join(wanted), text=True, check=True)
    body = out.read_text()
    if args.platform == "cuda":
        body = exact_torch(body)
    out.write_text(
        f"# {spec.package_on(args.platform)} {args.version} for {args.platform} machines, with "
        "what inferd's model\n"
        f"# process imports: python -m inferd.envs.lock {args.engine} {args.version} "
        f"--platform {args.platform}{f' --python {args.python}' if args.python else ''}\n{body}"
    )
    print(out, file=sys.stderr)


def exact_torch(lock: str) -> str:
    """`lock` with PyTorch's own packages pinned by `===`: `torch==2.13.0` is also met by the
    CPU build `2.13.0+cpu` (a local version), which a wheel folder on a GPU machine may hold,
    and uv would take it from there."""
    return re.sub(r"^(torch|torchaudio|torchvision)==", r"\1===", lock, flags=re.MULTILINE)


if __name__ == "__main__":
    main()
