"""Writes a BERT sequence classifier (a cross-encoder reranker) as a GGUF file llama.cpp loads
with rank pooling, using the `gguf` package: the tensor names and metadata llama.cpp's BERT
graph reads. Test tooling, so the llama.cpp rerank path runs on a model built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_LAYER_TENSORS = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
_TOP_TENSORS = {
    "bert.embeddings.word_embeddings.weight": "token_embd.weight",
    "bert.embeddings.position_embeddings.weight": "position_embd.weight",
    "bert.embeddings.token_type_embeddings.weight": "token_types.weight",
    "bert.embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "bert.embeddings.LayerNorm.bias": "token_embd_norm.bias",
    "bert.pooler.dense.weight": "cls.weight",
    "bert.pooler.dense.bias": "cls.bias",
    "classifier.weight": "cls.output.weight",
    "classifier.bias": "cls.output.bias",
}


def write_reranker_gguf(model: Any, tokenizer: Any, path: Path) -> None:
    """`model` is a transformers BertForSequenceClassification with one label."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    # llama.cpp's WordPiece vocabulary marks word starts with U+2581 and keeps
    # continuations ("##ing") bare; [CLS]-style entries are control tokens.
    tokens, types = [], []
    for piece, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        special = piece.startswith("[") and piece.endswith("]")
        if special:
            tokens.append(piece)
        elif piece.startswith("##"):
            tokens.append(piece[2:])
        else:
            tokens.append("\u2581" + piece)
        types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(2)
    writer.add_bos_token_id(tokenizer.cls_token_id)
    writer.add_eos_token_id(tokenizer.sep_token_id)
    writer.add_sep_token_id(tokenizer.sep_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_mask_token_id(tokenizer.mask_token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)

    names = dict(_TOP_TENSORS)
    for i in range(config.num_hidden_layers):
        for source, target in _LAYER_TENSORS.items():
            for kind in ("weight", "bias"):
                names[f"bert.encoder.layer.{i}.{source}.{kind}"] = f"blk.{i}.{target}.{kind}"
    state = model.state_dict()
    for source, target in names.items():
        writer.add_tensor(target, state[source].float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
