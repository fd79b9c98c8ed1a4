"""Images in chat on vLLM's CUDA build, through inferd: a LLaVA (a CLIP vision tower, a projector
and a Llama) with random weights and a real processor, registered with `vision` and launched with
`model_engine="vllm"`. Each image becomes IMAGE_TOKENS tokens of the prompt (224x224 pixels in
14x14 patches), so the prompt's token count says whether the pixels reached vLLM's multimodal
processor, through the OpenAI, Anthropic and Ollama APIs alike.

    python benchmarks/gpu/vllm_vision.py [--env NAME=VALUE ...]

Prints one JSON line per check and exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_probe import train_tokenizer
from vllm_vs_serve import engine_env, register, running, say, tail, wait_ready

IMAGE_TOKENS = (224 // 14) ** 2
TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {% if m.content is string %}{{ m.content }}"
    "{% else %}{% for p in m.content %}{% if p.type == 'image' %}<image>"
    "{% elif p.type == 'text' %}{{ p.text }}{% endif %}{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
BASE = "http://127.0.0.1:9997"


def build_llava(folder: Path) -> Path:
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    if (folder / "config.json").exists():
        return folder
    tokenizer = train_tokenizer("<image>")
    vision = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=224,
        patch_size=14,
        projection_dim=256,
    )
    text = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(folder)
    _hub_layout(folder / "model.safetensors")
    LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATE,
        image_token="<image>",
    ).save_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def _hub_layout(weights: Path) -> None:
    """Name the vision tower's weights as LLaVA checkpoints on the Hub do (`vision_tower.
    vision_model.*`), which vLLM reads; transformers 5 saves them a level up."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    renamed = {
        key.replace("vision_tower.", "vision_tower.vision_model.", 1)
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model.")
        else key: value
        for key, value in tensors.items()
    }
    save_file(renamed, weights, metadata={"format": "pt"})


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 20, 20)).save(out, format="PNG")
    return out.getvalue()


def ask(images: int, picture: str) -> list[dict[str, Any]]:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + picture}}
    return [{"role": "user", "content": [part] * images + [{"type": "text", "text": "What?"}]}]


def prompt_tokens(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    body = {"model": "seer", "messages": messages, "max_tokens": 8, **extra}
    answer = httpx.post(f"{BASE}/v1/chat/completions", json=body, timeout=300)
    if answer.status_code != 200:
        return {"status": answer.status_code, "answer": answer.text[:800]}
    return {"status": 200, "prompt_tokens": answer.json()["usage"]["prompt_tokens"]}


def checks(picture: str) -> bool:
    text = prompt_tokens([{"role": "user", "content": "What?"}])
    counts = [prompt_tokens(ask(n, picture)) for n in (1, 2)]
    say({"check": "openai chat, 0/1/2 images", "answers": [text, *counts]})
    if any(c["status"] != 200 for c in (text, *counts)):
        return False
    one, two = (c["prompt_tokens"] for c in counts)
    grows = two - one == IMAGE_TOKENS and one > text["prompt_tokens"]
    say({"check": "each image adds its patches", "expected": IMAGE_TOKENS, "added": two - one})
    streamed = httpx.post(
        f"{BASE}/v1/chat/completions",
        json={"model": "seer", "messages": ask(1, picture), "max_tokens": 8, "stream": True},
        timeout=300,
    )
    streams = streamed.status_code == 200 and '"content"' in streamed.text
    say({"check": "streamed", "status": streamed.status_code, "has_content": streams})
    ollama = httpx.post(
        f"{BASE}/api/chat",
        json={
            "model": "seer",
            "stream": False,
            "messages": [{"role": "user", "content": "What?", "images": [picture]}],
            "options": {"num_predict": 8},
        },
        timeout=300,
    ).json()
    claude = httpx.post(
        f"{BASE}/v1/messages",
        json={
            "model": "seer",
            "max_tokens": 8,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": picture,
                            },
                        },
                        {"type": "text", "text": "What?"},
                    ],
                }
            ],
        },
        timeout=300,
    ).json()
    ollama_tokens = ollama.get("prompt_eval_count")
    claude_tokens = (claude.get("usage") or {}).get("input_tokens")
    say({"check": "ollama and anthropic", "ollama": ollama_tokens, "anthropic": claude_tokens})
    return grows and streams and ollama_tokens == one and claude_tokens == one


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", type=Path, default=Path("/root/bench-logs"))
    parser.add_argument("--env", action="append", default=[])
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = build_llava(Path("/root/models/llava"))
    say({"model": "llava", "built_s": round(time.time() - started, 1)})
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    home = args.logs / "vision-home"
    root = Path(__file__).resolve().parents[2]
    server_env = {
        **env,
        "INFERD_HOME": str(home),
        "PYTHONPATH": f"{root / 'src'}:{env.get('PYTHONPATH', '')}",
    }
    log = args.logs / "vision.log"
    argv = [sys.executable, "-m", "inferd", "serve", "--port", "9997"]
    ok = False
    with running(argv, server_env, log) as process:
        wait_ready(BASE, "/health", 120, process)
        register(
            BASE, "seer", model, TEMPLATE, 4096,
            model_family="qwen2.5-vl-instruct",  # a vision family, as Xinference asks
            model_ability=["generate", "chat", "vision"],
        )  # fmt: skip
        forwarded = engine_env(env)
        started = time.time()
        launched = httpx.post(
            f"{BASE}/v1/models",
            json={
                "model_name": "seer", "model_uid": "seer", "model_engine": "vllm",
                "gpu_memory_utilization": 0.3, "max_model_len": 4096, "envs": forwarded,
            },
            timeout=900,
        )  # fmt: skip
        if launched.status_code != 200:
            say({"launch": launched.status_code, "error": launched.text[:2000], "log": tail(log)})
            logs = httpx.get(f"{BASE}/v1/models/seer/logs?tail=80").text
            say({"model_log": logs[-6000:]})
        else:
            say({"launch": 200, "ready_s": round(time.time() - started, 1)})
            ok = checks(base64.b64encode(png()).decode())
    say({"vision_on_vllm": "ok" if ok else "failed"})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
