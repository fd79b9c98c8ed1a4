"""Text to image through OpenAI's and Xinference's clients, on a Stable Diffusion pipeline of the
real architecture (CLIP text encoder, UNet, VAE, DDIM) with random weights, built here: the code
path, not the pictures."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import LLM, InferdServer, custom_model

pytestmark = pytest.mark.slow


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for bytes (GPT-2's scheme)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


@pytest.fixture(scope="module")
def pipeline_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


def tiny_sd_pipeline(folder: Path) -> Path:
    """A Stable Diffusion pipeline with random weights, saved under `folder`; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # A character-level CLIP tokenizer: every byte symbol, alone and word-final; no merges.
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder / "pipeline")
    return folder / "pipeline"


@pytest.fixture(scope="module")
def painter(launched: InferdServer, pipeline_path: Path) -> Iterator[str]:
    definition = {
        "model_name": "tiny-sd",
        "model_uri": str(pipeline_path),
        "model_format": "pytorch",
        "default_size": "64x64",
    }
    with custom_model(launched, "image", definition, num_inference_steps=2) as uid:
        yield uid


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return image.size


def test_openai_images_generate(launched: InferdServer, painter: str) -> None:
    client = launched.openai()
    result = client.images.generate(
        model=painter, prompt="a red cat", n=2, size="64x64", response_format="b64_json"
    )
    assert result.data and len(result.data) == 2
    for image in result.data:
        assert png_size(base64.b64decode(image.b64_json or "")) == (64, 64)
    wide = client.images.generate(
        model=painter,
        prompt="a red cat",
        size="128x64",  # type: ignore[arg-type]
        response_format="url",
    )
    url = (wide.data or [])[0].url or ""
    assert url.startswith("data:image/png;base64,")
    assert png_size(base64.b64decode(url.split(",", 1)[1])) == (128, 64)


def test_seed_makes_images_repeatable(launched: InferdServer, painter: str) -> None:
    url = f"{launched.url}/v1/images/generations"

    def paint(seed: int) -> str:
        body = {"model": painter, "prompt": "a red cat", "size": "64x64", "seed": seed}
        return str(httpx.post(url, json=body, timeout=120).json()["data"][0]["b64_json"])

    assert paint(7) == paint(7)
    assert paint(7) != paint(8)


def test_xinference_image_handle(launched: InferdServer, painter: str) -> None:
    handle = RESTfulClient(launched.url).get_model(painter)
    result = handle.text_to_image(
        "a red cat", n=1, size="64*64", response_format="b64_json", seed=3, num_inference_steps=1
    )
    assert png_size(base64.b64decode(result["data"][0]["b64_json"])) == (64, 64)
    names = {r["model_name"] for r in RESTfulClient(launched.url).list_model_registrations("image")}
    assert {"sd-turbo", "FLUX.1-schnell", "tiny-sd"} <= names


def test_bad_image_requests_are_refused(launched: InferdServer, painter: str) -> None:
    url = f"{launched.url}/v1/images/generations"
    base = {"model": painter, "prompt": "a red cat", "size": "64x64"}
    for change, param in (
        ({"size": "65x64"}, "size"),
        ({"size": "big"}, "size"),
        ({"n": 11}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"response_format": "gif"}, "response_format"),
        ({"kwargs": json.dumps({"strength": 0.5})}, "kwargs"),
        ({"kwargs": json.dumps({"num_inference_steps": 0})}, "kwargs"),
        ({"model": LLM}, "model"),
    ):
        answer = httpx.post(url, json={**base, **change}, timeout=60)
        assert answer.status_code == 400, (change, answer.text)
        assert answer.json()["error"]["param"] == param, (change, answer.text)
