"""Linear attention (elu + 1 feature map): its O(n) forms equal its quadratic form, and its implied weights
are ordinary attention weights for every hook, intervention, capture and attention-derived method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_probe.attention import (
    DecoderLM,
    EncoderClassifier,
    LinearAttention,
    MultiHeadAttention,
    TransformerConfig,
    hooks,
    linear_attention,
    make_position,
    record,
    uniform_weights,
)
from attn_probe.capture import capture
from attn_probe.methods import explain
from benchmarks.efficient_attention import peak_allocated_bytes

EMBED, HEADS, HEAD_DIM = 32, 4, 8


def module(position: str = "none", chunk_size: int = 8, **options) -> MultiHeadAttention:
    variant = make_position(position, embed_dim=EMBED, num_heads=HEADS, head_dim=HEAD_DIM)
    return MultiHeadAttention(
        EMBED, HEADS, position=variant, kind=LinearAttention(chunk_size=chunk_size), **options
    ).eval()


def quadratic(attention: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor | None, causal: bool):
    """The textbook quadratic form from the module's parameters: ``A = φ(q) φ(k)ᵀ`` over the visible keys,
    row-normalised; ``output = out_proj(A v)``. Returns ``(output, A)``."""
    batch, n, _ = x.shape
    positions = torch.arange(n)
    if attention.position is not None and attention.position.acts_on == "input":
        x = attention.position.embed(x, positions)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, n, HEADS, HEAD_DIM).transpose(1, 2)

    q, k, v = heads(attention.q_proj(x)), heads(attention.k_proj(x)), heads(attention.v_proj(x))
    if attention.position is not None and attention.position.acts_on == "rotary":
        q, k = attention.position.rotate(q, k, positions, positions)
    scores = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)  # [b, h, n, n]
    visible = torch.ones(batch, 1, n, n, dtype=torch.bool)
    if mask is not None:
        visible = visible & mask[:, None, None, :]
    if causal:
        visible = visible & torch.ones(n, n, dtype=torch.bool).tril()
    scores = scores * visible
    total = scores.sum(-1, keepdim=True)
    weights = torch.where(total > 0, scores / total.clamp_min(1e-30), 0.0)
    merged = (weights @ v).transpose(1, 2).reshape(batch, n, EMBED)
    return attention.out_proj(merged), weights


def padding(batch: int, n: int) -> torch.Tensor:
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, n // 2 + 1 :] = False  # a padded example
    mask[2, :] = False  # an example with no key at all
    return mask


@pytest.mark.parametrize("position", ["none", "learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [7, 29])  # one chunk of 8 (padded), several chunks with a partial last one
@pytest.mark.parametrize("masked", [False, True])
def test_linear_forms_equal_the_quadratic_form(position, causal, n, masked):
    attention = module(position)
    x = torch.randn(3, n, EMBED)
    mask = padding(3, n) if masked else None
    fast, none = attention(x, mask=mask, causal=causal)
    explicit, weights = attention(x, mask=mask, causal=causal, need_weights=True)
    reference, reference_weights = quadratic(attention, x, mask, causal)
    assert none is None
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(explicit, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights, reference_weights, rtol=0, atol=1e-5)
    # Implied weights: a distribution over the visible keys, exactly 0 on padding and the future.
    visible = reference_weights > 0
    assert torch.all(weights[~visible] == 0)
    sums = weights.sum(-1)
    has_keys = visible.any(-1)
    torch.testing.assert_close(sums[has_keys], torch.ones_like(sums[has_keys]), rtol=0, atol=1e-6)
    if masked:
        assert torch.all(sums[2] == 0) and torch.all(fast[2] == attention.out_proj.bias)


def test_functional_form_with_grouped_heads_and_a_general_mask():
    attention = module(num_kv_heads=2)
    x = torch.randn(3, 9, EMBED)
    per_query = torch.rand(3, 9, 9) > 0.3  # not a key padding: the quadratic form computes it
    per_query[:, torch.arange(9), torch.arange(9)] = True
    fast, _ = attention(x, mask=per_query)
    explicit, weights = attention(x, mask=per_query, need_weights=True)
    torch.testing.assert_close(fast, explicit, rtol=0, atol=1e-6)
    assert torch.all(weights[~per_query[:, None].expand_as(weights)] == 0)
    q, k, v = torch.randn(2, 3, 20, 4), torch.randn(2, 3, 20, 4), torch.randn(2, 3, 20, 5)
    chunked = linear_attention(q, k, v, causal=True, chunk_size=3)
    scores = ((F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)).tril()
    torch.testing.assert_close(chunked, (scores / scores.sum(-1, keepdim=True)) @ v, rtol=0, atol=1e-5)


def test_padded_batch_equals_single_examples():
    attention = module("rotary")
    x = torch.randn(2, 12, EMBED)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    for causal in (False, True):
        together, _ = attention(x, mask=mask, causal=causal)
        alone, _ = attention(x[1:, :7], causal=causal)
        torch.testing.assert_close(together[1, :7], alone[0], rtol=0, atol=1e-6)


def test_hooks_fire_and_uniform_weights_spread_over_the_visible_keys():
    attention = module()
    x = torch.randn(3, 10, EMBED)
    mask = padding(3, 10)
    with record(attention, ["hook_q", "hook_k", "hook_v", "hook_head_output"]) as cache:
        attention(x, mask=mask)  # the O(n) path: these points fire all the same
    assert cache["hook_head_output"].shape == (3, HEADS, 10, HEAD_DIM)
    with record(attention, ["hook_logits", "hook_weights"]) as cache:
        observed, _ = attention(x, mask=mask)
    # Logits (before masking) are log φ(q)·φ(k): on the unpadded example their softmax is the weights.
    torch.testing.assert_close(cache["hook_weights"][0], cache["hook_logits"][0].softmax(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(observed, attention(x, mask=mask)[0], rtol=0, atol=1e-6)
    parts = attention.split_logits(x)  # no position variant: all content
    torch.testing.assert_close(parts.total[0], cache["hook_logits"][0], rtol=0, atol=1e-6)
    with (
        hooks(attention, {"hook_weights": uniform_weights(head=1)}),
        record(attention, ["hook_v", "hook_head_output"]) as cache,
    ):
        attention(x, mask=mask, causal=True)
    visible = (mask[1][None, :] & torch.ones(10, 10, dtype=torch.bool).tril()).float()
    expected = (visible / visible.sum(-1, keepdim=True)) @ cache["hook_v"][1, 1]
    torch.testing.assert_close(cache["hook_head_output"][1, 1], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("model_class", "position"), [(EncoderClassifier, "learned"), (EncoderClassifier, "none"), (DecoderLM, "rotary")]
)
def test_capture_and_attention_methods_run_on_linear_models(model_class, position):
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=50, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, position=position, attention="linear",
        attention_options={"chunk_size": 4},
    )  # fmt: skip
    model = model_class(config).eval()
    inputs = {"input_ids": torch.randint(3, 50, (2, 11)), "attention_mask": torch.tensor([[1] * 11, [1] * 7 + [0] * 4])}
    captured = capture(model, inputs)
    assert captured.drift < 1e-5  # the capture's quadratic form and the model's O(n) form agree
    weights = captured.weights  # [batch, layers, heads, q, k]
    visible = inputs["attention_mask"].bool()[:, None, None, None, :].expand_as(weights)
    if model_class is DecoderLM:
        visible = visible & torch.ones(11, 11, dtype=torch.bool).tril()
    assert torch.all(weights[~visible] == 0) and torch.all(weights[visible] > 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), rtol=0, atol=1e-5)
    explanations = explain(model, inputs, ["raw_attention", "attention_rollout"])
    alone = {key: value[1:, :7] for key, value in inputs.items()}
    for method, explanation in explain(model, alone, ["raw_attention", "attention_rollout"]).items():
        together = explanations[method].scores
        assert torch.isfinite(together).all() and torch.all(together[1, 7:] == 0)
        torch.testing.assert_close(together[1, :7], explanation.scores[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_memory_grows_linearly(causal):
    torch.set_num_threads(1)
    attention = MultiHeadAttention(16, 2, kind=LinearAttention()).eval()
    peaks = {}
    with torch.inference_mode():
        for n in (4096, 8192):
            x = torch.randn(1, n, 16)
            mask = torch.ones(1, n, dtype=torch.bool)
            peaks[n] = peak_allocated_bytes(lambda x=x, mask=mask: attention(x, mask=mask, causal=causal))
    assert peaks[8192] < 8192 * 8192 * 4 / 8, peaks  # an eighth of one head's [n, n] float32 matrix
    assert peaks[8192] / peaks[4096] < 2.2, peaks


@pytest.mark.parametrize("position", ["alibi", "t5", "shaw"])
def test_logit_position_variants_are_refused(position):
    with pytest.raises(ValueError, match="kernel attention has no logits"):
        module(position)
    with pytest.raises(ValueError, match="linear attention cannot use position"):
        TransformerConfig(attention="linear", position=position)


def test_options_that_need_a_softmax_are_refused():
    with pytest.raises(ValueError, match="dropout"):
        module(dropout=0.1)
    with pytest.raises(ValueError, match="temperature"):
        module(temperature=2.0)
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(attention="linear", attention_dropout=0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        LinearAttention(chunk_size=0)
    assert MultiHeadAttention(EMBED, HEADS, kind="linear").kind == LinearAttention()
