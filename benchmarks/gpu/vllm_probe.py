"""Does vLLM generate on this GPU? A Llama of a real size with random weights and a byte-level
BPE tokenizer trained here (the machine reaches no hub), loaded by vLLM's offline `LLM`; every
thread's stack is printed if a step hangs, so a hang says where it is.

    python benchmarks/gpu/vllm_probe.py [--size 0.5b|1b|3b|8b] [--eager] [--hang-after S]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

SIZES = {  # hidden, intermediate, layers, heads, kv heads
    "0.5b": (1024, 4096, 24, 16, 4),
    "1b": (2048, 8192, 16, 32, 8),
    "3b": (3072, 8192, 28, 24, 8),
    "8b": (4096, 14336, 32, 32, 8),
}


def train_tokenizer(*special: str) -> Any:
    """A byte-level BPE of 32,000 tokens trained here (the machine reaches no hub), with
    `special` tokens added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = [f"word{i} the of and to in is for on with" for i in range(20000)]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(
        words,
        trainers.BpeTrainer(
            vocab_size=32000 - len(special),
            special_tokens=["<unk>", "<s>", "</s>", *special],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=list(special),
    )


def build_model(folder: Path, size: str) -> Path:
    """A Llama of `size` with random weights, saved with a tokenizer of its own."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").exists():
        return folder
    tokenizer = train_tokenizer()
    hidden, inter, layers, heads, kv = SIZES[size]
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="0.5b", choices=sorted(SIZES))
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--hang-after", type=float, default=300)
    parser.add_argument("--model-dir", default="/root/models")
    args = parser.parse_args()
    faulthandler.dump_traceback_later(args.hang_after, repeat=True)
    started = time.time()
    folder = build_model(Path(args.model_dir) / args.size, args.size)
    print(f"model ready in {time.time() - started:.1f}s", flush=True)
    print({k: v for k, v in os.environ.items() if k.startswith(("VLLM", "NCCL", "GLOO"))})

    from vllm import LLM, SamplingParams

    started = time.time()
    llm = LLM(
        model=str(folder),
        dtype="bfloat16",
        gpu_memory_utilization=0.5,
        max_model_len=4096,
        enforce_eager=args.eager,
    )
    print(f"vLLM loaded in {time.time() - started:.1f}s", flush=True)
    params = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    for streams in (1, 32):
        prompts = [f"word{i} the of" for i in range(streams)]
        started = time.time()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.time() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        print(json.dumps({"streams": streams, "tokens": tokens, "tok_per_s": tokens / seconds}))
    sys.stdout.flush()
    os._exit(0)  # vLLM's engine process would otherwise hold the command open


if __name__ == "__main__":
    main()
