#!/usr/bin/env bash
# vLLM's CUDA build on the GPU machine, which reaches no package registry and takes at most
# 64 MiB of files a command: the wheel travels in pieces over consecutive commands (the machine
# stays warm 30 s after each), kept outside the work tree there, then is joined and installed.
# benchmarks/gpu/README.md says how to make the pieces here and in which order to send them.
#
#   stash DIR     copy a carried piece (or the folder of small wheels) to $STORE
#   install       join the pieces, check the sha256, install everything into $SITE
#   server DIR    install the carried wheels of inferd's server (fetch_wheels.sh server) into $SITE
#   probe [ARGS]  python benchmarks/gpu/vllm_probe.py ARGS with $SITE on the path
#   embeddings [ARGS]
#                 after `server .gpu/server`: the CUDA-graph tests, then
#                 python benchmarks/gpu/embeddings.py ARGS
set -euo pipefail
STORE=${STORE:-/root/gpu}
SITE=${SITE:-/root/site}
WHEEL=vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl

case "$1" in
stash)
    mkdir -p "$STORE"
    cp -r "$2"/. "$STORE"/
    ls -la "$STORE" | tail -n +2
    ;;
install)
    cd "$STORE"
    cat vllm.whl.part* > "$WHEEL"
    sha256sum -c vllm.sha256
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" ./*.whl
    rm -f vllm.whl.part*
    ;;
server)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$2"/*.whl
    ;;
probe)
    shift
    # NVLink multicast stays off on these machines (KINDS.md).
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1 \
        python3 benchmarks/gpu/vllm_probe.py "$@"
    ;;
embeddings)
    shift
    # The graph tests first: the figures of passes that answer wrongly would mean nothing.
    INFERD_TEST_TOKENIZER="$PWD/.gpu/server/tokenizer" PYTHONPATH="$SITE:$PWD/src:$PWD" \
        python3 -m pytest -q -p no:cacheprovider --noconftest -m gpu tests/test_graphed_passes.py
    PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1 \
        python3 benchmarks/gpu/embeddings.py "$@"
    ;;
*)
    echo "usage: $0 stash DIR | install | server DIR | probe [ARGS] | embeddings [ARGS]" >&2
    exit 2
    ;;
esac
