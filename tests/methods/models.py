"""Small models and checks shared by the method tests (imported, not fixtures: they are parametrised)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from attn_probe.attention import DecoderLM, EncoderClassifier, TransformerConfig
from attn_probe.capture import tokenize
from attn_probe.methods import ExplainContext
from tests.capture.families import batch, build

TEXTS = ["a gorgeous, witty movie", "dull"]


def our_encoder() -> EncoderClassifier:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=100, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64)
    return EncoderClassifier(config).eval()


def our_decoder() -> DecoderLM:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=100, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, position="rotary", prenorm=True,
        norm="rmsnorm", mlp="swiglu", embedding_norm=False, pooler=False, bias=False,
    )  # fmt: skip
    return DecoderLM(config).eval()


MODELS = {
    "hf-bert": lambda: (build("bert"), batch("bert")),
    "hf-llama": lambda: (build("llama"), batch("llama")),
    "our-encoder": lambda: (our_encoder(), batch("bert")),
    "our-decoder": lambda: (our_decoder(), batch("llama")),
}


def single(inputs: dict, i: int) -> dict:
    """Example ``i`` alone, without padding."""
    real = inputs["attention_mask"][i].bool()
    return {key: value[i : i + 1, real] for key, value in inputs.items()}


def assert_padded_batch_equals_single_examples(fn: Callable, model_name: str, **options) -> None:
    """``fn`` on a padded batch gives each example the scores it gets alone, and padding exactly 0."""
    model, inputs = MODELS[model_name]()
    together = fn(ExplainContext(model, inputs), **options).scores
    for i in range(inputs["input_ids"].shape[0]):
        alone = fn(ExplainContext(model, single(inputs, i)), **options).scores
        real = inputs["attention_mask"][i].bool()
        torch.testing.assert_close(together[i, real], alone[0], rtol=0, atol=1e-5)
        assert torch.all(together[i, ~real] == 0)


def assert_tokenized_batch_equals_single_texts(methods: dict[str, Callable], model, tokenizer) -> None:
    """The same with real special tokens ([CLS], [SEP]) from the tokenizer."""
    inputs = tokenize(tokenizer, TEXTS)
    for method_id, fn in methods.items():
        together = fn(ExplainContext(model, inputs, tokenizer=tokenizer)).scores
        for i, text in enumerate(TEXTS):
            alone = fn(ExplainContext(model, tokenize(tokenizer, [text]), tokenizer=tokenizer)).scores
            real = inputs.attention_mask[i].bool()
            torch.testing.assert_close(together[i, real], alone[0], rtol=0, atol=1e-5, msg=method_id)
