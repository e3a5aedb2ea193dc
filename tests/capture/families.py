"""Tiny random-init models of every architecture family the capture supports (nothing is downloaded).

``initializer_range`` is raised from the default 0.02 so that heads are far from uniform: with
near-uniform weights every comparison would pass whatever the capture did.
"""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 100
COMMON = dict(vocab_size=VOCAB, initializer_range=0.3)


def _bert_like(config_class, **extra):
    return config_class(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **COMMON, **extra
    )


def _llama_like(config_class, **extra):
    return config_class(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        max_position_embeddings=64, **COMMON, **extra,
    )  # fmt: skip


CONFIGS = {
    "bert": lambda: _bert_like(tf.BertConfig),
    "roberta": lambda: _bert_like(tf.RobertaConfig, pad_token_id=1),
    "electra": lambda: _bert_like(tf.ElectraConfig, embedding_size=16),
    "distilbert": lambda: tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **COMMON),
    "deberta-v2": lambda: _bert_like(
        tf.DebertaV2Config,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
    ),
    "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **COMMON),
    "llama": lambda: _llama_like(tf.LlamaConfig),
    "qwen2": lambda: _llama_like(tf.Qwen2Config),
    "mistral": lambda: _llama_like(tf.MistralConfig, sliding_window=4),
    "t5": lambda: tf.T5Config(
        d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8, **COMMON
    ),
    "bloom": lambda: tf.BloomConfig(hidden_size=32, n_layer=2, n_head=4, **COMMON),
}
FAMILIES = list(CONFIGS)
SEQ2SEQ = {"t5"}
DECODER_ONLY = {"gpt2", "llama", "qwen2", "mistral", "bloom"}


def _model_class(family: str):
    if family in SEQ2SEQ:
        return tf.AutoModelForSeq2SeqLM
    if family in DECODER_ONLY:
        return tf.AutoModelForCausalLM
    return tf.AutoModelForSequenceClassification


def build(family: str, attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """The family's model with a head (classifier, LM or seq2seq) in eval mode.

    Families that only have eager attention (BLOOM, DeBERTa-v2) refuse "sdpa" and get their own.
    """
    torch.manual_seed(seed)
    try:
        model = _model_class(family).from_config(CONFIGS[family](), attn_implementation=attn_implementation)
    except (ValueError, ImportError):
        torch.manual_seed(seed)
        model = _model_class(family).from_config(CONFIGS[family]())
    return model.eval()


def twin(family: str, model: torch.nn.Module, attn_implementation: str = "eager") -> torch.nn.Module:
    """The same weights in a model built with another attention implementation (the reference).

    The implementation is checked: a reference silently left on SDPA would return no weights.
    """
    copy = build(family, attn_implementation)
    copy.load_state_dict(model.state_dict())
    assert copy.config._attn_implementation in (attn_implementation, "eager"), copy.config._attn_implementation
    return copy.to(next(model.parameters()).device).eval()


def batch(family: str, lengths=(7, 4), seed: int = 1) -> dict[str, torch.Tensor]:
    """A right-padded batch of random token ids (ids avoid 0-3, which some families reserve)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    pad = 1 if family == "roberta" else 0
    input_ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(4, VOCAB, (length,), generator=generator)
        attention_mask[row, :length] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family in SEQ2SEQ:
        inputs["decoder_input_ids"] = torch.randint(4, VOCAB, (len(lengths), 5), generator=generator)
    return inputs
