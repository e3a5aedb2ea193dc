"""Tiny random-init models of every architecture family the capture supports (nothing is downloaded).

``initializer_range`` is raised from the default 0.02 so that heads are far from uniform: with
near-uniform weights every comparison would pass whatever the capture did.
"""

from __future__ import annotations

import contextlib

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


def build(family: str, attn_implementation: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """The family's base model (for decoders: with its LM head) in eval mode."""
    torch.manual_seed(seed)
    if family in SEQ2SEQ:
        model_class = tf.AutoModelForSeq2SeqLM
    elif family in DECODER_ONLY:
        model_class = tf.AutoModelForCausalLM
    else:
        model_class = tf.AutoModelForSequenceClassification
    try:
        model = model_class.from_config(CONFIGS[family](), attn_implementation=attn_implementation)
    except (ValueError, ImportError):  # families that only have eager attention
        torch.manual_seed(seed)
        model = model_class.from_config(CONFIGS[family]())
    return model.eval()


def twin(model: torch.nn.Module, attn_implementation: str = "eager") -> torch.nn.Module:
    """The same weights loaded with another attention implementation (the reference)."""
    copy = type(model)(model.config.__class__.from_dict(model.config.to_dict()))
    copy.load_state_dict(model.state_dict())
    with contextlib.suppress(ValueError, ImportError):
        copy.set_attn_implementation(attn_implementation)
    return copy.eval()


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
