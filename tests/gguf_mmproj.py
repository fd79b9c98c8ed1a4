"""Writes a vision projector (mmproj) GGUF for the demo Gemma 3 270M with random weights, using
the `gguf` package: a small SigLIP-style encoder and Gemma 3's projection into the text model's
640-wide embeddings, under the names and metadata llama.cpp's multimodal loader reads. Test
tooling, so llama.cpp's image path runs on a model built here."""

from __future__ import annotations

from pathlib import Path

GEMMA_270M_WIDTH = 640
IMAGE_SIZE, PATCH_SIZE = 64, 4
# Gemma 3 pools the encoder's 16x16 patches 4x4: 16 embeddings per image.
IMAGE_EMBEDDINGS = (IMAGE_SIZE // PATCH_SIZE // 4) ** 2


def gemma_vision(name: str, **spec: object) -> dict:
    """A registration of the demo Gemma GGUF as a vision model (Xinference's JSON): a vision
    family, the processor-style template, and one GGUF spec with `spec`'s fields (where the
    weights are, its multimodal_projectors)."""
    from tests.conftest import VISION_TEMPLATE

    return {
        "version": 2,
        "model_name": name,
        "model_family": "gemma-3-it",
        "model_ability": ["chat", "vision"],
        "context_length": 2048,
        "chat_template": VISION_TEMPLATE,
        "model_specs": [
            {"model_format": "ggufv2", "model_size_in_billions": "0_27", **spec},
        ],
    }


def write_mmproj(path: Path, width: int = 32, layers: int = 2, heads: int = 2) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("gemma3")
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(width)
    writer.add_vision_feed_forward_length(width * 2)
    writer.add_vision_projection_dim(GEMMA_270M_WIDTH)
    writer.add_vision_block_count(layers)
    writer.add_vision_head_count(heads)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(4)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        values = np.ones(shape) if ones else rng.standard_normal(shape) * 0.02
        writer.add_tensor(name, values.astype(np.float32))

    tensor("v.patch_embd.weight", width, 3, PATCH_SIZE, PATCH_SIZE)
    tensor("v.patch_embd.bias", width)
    tensor("v.position_embd.weight", (IMAGE_SIZE // PATCH_SIZE) ** 2, width)
    for i in range(layers):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{i}.{name}.weight", width, width)
            tensor(f"v.blk.{i}.{name}.bias", width)
        for norm in ("ln1", "ln2"):
            tensor(f"v.blk.{i}.{norm}.weight", width, ones=True)
            tensor(f"v.blk.{i}.{norm}.bias", width)
        tensor(f"v.blk.{i}.ffn_up.weight", width * 2, width)
        tensor(f"v.blk.{i}.ffn_up.bias", width * 2)
        tensor(f"v.blk.{i}.ffn_down.weight", width, width * 2)
        tensor(f"v.blk.{i}.ffn_down.bias", width)
    tensor("v.post_ln.weight", width, ones=True)
    tensor("v.post_ln.bias", width)
    tensor("mm.input_projection.weight", width, GEMMA_270M_WIDTH)
    tensor("mm.soft_emb_norm.weight", width, ones=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
