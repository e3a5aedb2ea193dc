"""Sliding-window and block-sparse attention: full attention with the pattern as a mask, at O(n w) cost.

The reference is always our full attention (same weights) given the pattern as an explicit ``[b, q, k]``
mask, with the pattern built here independently of ``attn_probe.attention.sparse``.
"""

from __future__ import annotations

import pytest
import torch

from attn_probe.attention import (
    BlockSparse,
    DecoderLM,
    EncoderClassifier,
    MultiHeadAttention,
    SlidingWindow,
    TransformerConfig,
    hooks,
    make_attention_kind,
    make_position,
    record,
    uniform_weights,
)
from attn_probe.capture import capture
from attn_probe.methods import explain
from benchmarks.efficient_attention import peak_allocated_bytes
from benchmarks.efficient_attention import run as run_benchmark

EMBED, HEADS, HEAD_DIM, N = 32, 4, 8, 13


def reference_pattern(kind, n: int) -> torch.Tensor:
    """``[n, n]`` True where query i may see key j, written out from the definitions."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if isinstance(kind, SlidingWindow):
        visible = (i - j).abs() <= kind.window
    else:
        visible = (i // kind.block_size) == (j // kind.block_size)
        if kind.stride:
            visible = visible | ((i - j) % kind.stride == 0)
    glob = range(kind.global_tokens) if isinstance(kind.global_tokens, int) else kind.global_tokens
    for g in glob:
        if g < n:
            visible[g, :] = True
            visible[:, g] = True
    return visible


KINDS = {
    "window2+globals0,6": SlidingWindow(window=2, global_tokens=(0, 6)),
    "window20": SlidingWindow(window=20),
    "window17+global1": SlidingWindow(window=17, global_tokens=1),  # block 17 > MIN_WINDOW_BLOCK
    "block4+stride3+global1": BlockSparse(block_size=4, stride=3, global_tokens=1),
    "block5": BlockSparse(block_size=5),
}


def pair(
    kind, position: str = "none", causal: bool = False, **options
) -> tuple[MultiHeadAttention, MultiHeadAttention]:
    """A sparse module and a full one with the very same parameters (and position module)."""
    variant = make_position(position, embed_dim=EMBED, num_heads=HEADS, head_dim=HEAD_DIM, causal=causal)
    sparse = MultiHeadAttention(EMBED, HEADS, position=variant, kind=kind, **options).eval()
    full = MultiHeadAttention(EMBED, HEADS, position=variant, **options).eval()
    full.load_state_dict(sparse.state_dict())
    return sparse, full


def padding() -> torch.Tensor:
    mask = torch.ones(3, N, dtype=torch.bool)
    mask[1, 9:] = False  # a padded example
    mask[2, :] = False  # an example with no key at all
    return mask


def full_mask(kind, mask: torch.Tensor | None, batch: int = 3, n: int = N) -> torch.Tensor:
    visible = reference_pattern(kind, n).expand(batch, n, n)
    return visible if mask is None else visible & mask[:, None, :]


@pytest.mark.parametrize("kind_id", list(KINDS))
@pytest.mark.parametrize("position", ["none", "rotary", "alibi", "t5", "shaw", "learned"])
@pytest.mark.parametrize("causal", [False, True])
def test_equals_full_attention_with_the_pattern_as_mask(kind_id, position, causal):
    kind = KINDS[kind_id]
    sparse, full = pair(kind, position, causal)
    x = torch.randn(3, N, EMBED)
    mask = padding()
    compact, none = sparse(x, mask=mask, causal=causal)
    explicit, weights = sparse(x, mask=mask, causal=causal, need_weights=True)
    reference, reference_weights = full(x, mask=full_mask(kind, mask), causal=causal, need_weights=True)
    assert none is None
    torch.testing.assert_close(compact, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(explicit, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(weights, reference_weights, rtol=0, atol=1e-5)
    # Dense weights: exact zeros outside the pattern (and padding, and the future); rows sum to 1 elsewhere.
    visible = full_mask(kind, mask)[:, None].expand_as(weights)
    if causal:
        visible = visible & torch.ones(N, N, dtype=torch.bool).tril()
    assert torch.all(weights[~visible] == 0.0)
    sums = weights.sum(-1)
    has_keys = visible.any(-1)
    torch.testing.assert_close(sums[has_keys], torch.ones_like(sums[has_keys]), rtol=0, atol=1e-6)
    assert torch.all(sums[~has_keys] == 0) and torch.all(compact[2] == sparse.out_proj.bias)


@pytest.mark.parametrize("kind_id", ["window2+globals0,6", "block4+stride3+global1"])
def test_per_example_positions_grouped_heads_and_gradients(kind_id):
    kind = KINDS[kind_id]
    sparse, full = pair(kind, "alibi", num_kv_heads=2)
    x = torch.randn(2, N, EMBED, requires_grad=True)
    positions = torch.stack([torch.arange(N), torch.arange(N) + 5])  # [batch, n]
    compact, _ = sparse(x, positions=positions)
    reference, _ = full(x, positions=positions, mask=full_mask(kind, None, batch=2))
    torch.testing.assert_close(compact, reference, rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(compact.square().sum(), x)
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), x)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-5)


def test_padded_batch_equals_single_examples():
    sparse, _ = pair(SlidingWindow(window=2, global_tokens=1), "t5")
    x = torch.randn(2, N, EMBED)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, 8:] = False  # right padding
    together, _ = sparse(x, mask=mask)
    alone, _ = sparse(x[1:, :8])
    torch.testing.assert_close(together[1, :8], alone[0], rtol=0, atol=1e-6)


def test_hooks_fire_and_weight_hooks_see_the_dense_pattern():
    sparse, _ = pair(SlidingWindow(window=2, global_tokens=1), "alibi")
    x = torch.randn(2, N, EMBED)
    names = ["hook_q", "hook_k", "hook_v", "hook_head_output", "hook_output"]
    with record(sparse, names) as cache:
        sparse(x)  # no weight hook: the compact path, and these points still fire
    assert set(cache) == set(names)
    assert cache["hook_head_output"].shape == (2, HEADS, N, HEAD_DIM)
    with record(sparse, ["hook_logits", "hook_position", "hook_weights"]) as cache:
        output, _ = sparse(x)
    assert cache["hook_weights"].shape == cache["hook_logits"].shape == (2, HEADS, N, N)
    outside = ~reference_pattern(sparse.kind, N)
    assert torch.all(cache["hook_weights"][..., outside] == 0)
    torch.testing.assert_close(output, sparse(x)[0], rtol=0, atol=1e-6)  # observing changes nothing


@pytest.mark.parametrize("kind_id", ["window2+globals0,6", "block4+stride3+global1"])
def test_uniform_weights_intervention_spreads_over_the_visible_pattern(kind_id):
    kind = KINDS[kind_id]
    sparse, full = pair(kind)
    x = torch.randn(3, N, EMBED)
    mask = padding()
    edit = {"hook_weights": uniform_weights(head=[0, 2])}
    with hooks(sparse, edit), record(sparse, ["hook_v", "hook_head_output"]) as cache:
        edited, _ = sparse(x, mask=mask)
    with hooks(full, edit):
        reference, _ = full(x, mask=full_mask(kind, mask))
    torch.testing.assert_close(edited, reference, rtol=0, atol=1e-5)
    # Head 0 of example 1: each real query reads the plain mean of the values of its visible real keys.
    visible = (reference_pattern(kind, N) & mask[1][None, :]).float()
    expected = (visible / visible.sum(-1, keepdim=True)) @ cache["hook_v"][1, 0]
    torch.testing.assert_close(cache["hook_head_output"][1, 0], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(edited, sparse(x, mask=mask)[0])


@pytest.mark.parametrize(
    ("model_class", "attention", "options", "position"),
    [
        (EncoderClassifier, "sliding", {"window": 2, "global_tokens": 1}, "learned"),
        (EncoderClassifier, "block_sparse", {"block_size": 3, "stride": 4, "global_tokens": 1}, "alibi"),
        (DecoderLM, "sliding", {"window": 3}, "rotary"),
    ],
)
def test_capture_and_attention_methods_run_on_sparse_models(model_class, attention, options, position):
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=50, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, position=position,
        attention=attention, attention_options=options,
    )  # fmt: skip
    model = model_class(config).eval()
    inputs = {"input_ids": torch.randint(3, 50, (2, 11)), "attention_mask": torch.tensor([[1] * 11, [1] * 7 + [0] * 4])}
    captured = capture(model, inputs)
    assert captured.drift < 1e-5  # the capture's dense path and the model's compact path agree
    weights = captured.weights  # [batch, layers, heads, q, k]
    visible = reference_pattern(make_attention_kind(attention, **options), 11)[None, None, None]
    visible = visible & inputs["attention_mask"].bool()[:, None, None, None, :]
    if model_class is DecoderLM:
        visible = visible & torch.ones(11, 11, dtype=torch.bool).tril()
    assert torch.all(weights[~visible.expand_as(weights)] == 0)
    sums = weights.sum(-1)  # [batch, layers, heads, q]
    has_keys = visible.expand_as(weights).any(-1)  # a padded query may have no real key in its window: 0
    torch.testing.assert_close(sums[has_keys], torch.ones_like(sums[has_keys]), rtol=0, atol=1e-5)
    assert torch.all(sums[~has_keys] == 0) and has_keys[:, :, :, :7].all()
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
    torch.testing.assert_close(weights, torch.stack(reference, dim=1), rtol=0, atol=1e-6)

    explanations = explain(model, inputs, ["raw_attention", "attention_rollout"])
    for explanation in explanations.values():
        scores = explanation.scores
        assert torch.isfinite(scores).all() and torch.all(scores[1, 7:] == 0)
    alone = {key: value[1:, :7] for key, value in inputs.items()}
    for method, explanation in explain(model, alone, ["raw_attention", "attention_rollout"]).items():
        torch.testing.assert_close(explanations[method].scores[1, :7], explanation.scores[0], rtol=0, atol=1e-5)


def test_the_no_weights_path_never_forms_an_n_by_n_matrix():
    """Peak tensor bytes of one call (torch.profiler's allocation records): linear in n, and far below a
    single ``[n, n]`` float32 matrix of one head (the dense path would hold two per head)."""
    torch.set_num_threads(1)
    module = MultiHeadAttention(16, 2, kind=SlidingWindow(window=16, global_tokens=1)).eval()
    peaks = {}
    with torch.inference_mode():
        for n in (4096, 8192):
            x = torch.randn(1, n, 16)
            mask = torch.ones(1, n, dtype=torch.bool)
            peaks[n] = peak_allocated_bytes(lambda x=x, mask=mask: module(x, mask=mask))
    one_matrix = 8192 * 8192 * 4  # 256 MiB
    assert peaks[8192] < one_matrix / 8, peaks
    assert peaks[8192] / peaks[4096] < 2.2, peaks  # linear growth (x2), not quadratic (x4)


def test_bad_kinds_and_options_are_explained():
    with pytest.raises(ValueError, match="window >= 1"):
        SlidingWindow(window=0)
    with pytest.raises(ValueError, match="its options are: window, global_tokens"):
        make_attention_kind("sliding", windw=3)
    with pytest.raises(ValueError, match="unknown attention kind"):
        TransformerConfig(attention="sparse")
    with pytest.raises(ValueError, match="missing 1 required positional argument: 'block_size'"):
        TransformerConfig(attention="block_sparse", attention_options={"stride": 2})
    with pytest.raises(ValueError, match="block_size >= 1"):
        BlockSparse(block_size=0)
    with pytest.raises(ValueError, match="full attention takes no options"):
        make_attention_kind("full", window=2)
    sparse, _ = pair(SlidingWindow(window=2))
    with pytest.raises(ValueError, match="self-attention"):
        sparse(torch.randn(1, 5, EMBED), torch.randn(1, 7, EMBED), torch.randn(1, 7, EMBED))
    assert MultiHeadAttention(EMBED, HEADS, kind="full").kind is None
    assert sparse.kind_name == "sliding"


def test_benchmark_entry_rows_agree_with_the_dense_reference():
    torch.set_num_threads(1)
    rows = run_benchmark(quick=True, device="cpu", sizes=[128, 256])
    cases = [row for row in rows if not row.get("fit")]
    fits = {row["variant"]: row for row in rows if row.get("fit")}
    assert len(cases) == 2 * len(fits) == 12
    for row in cases:
        assert row["outputs_agree"] and row["output_max_abs_diff"] < 1e-5, row["case"]
        assert row["peak_bytes"] > 0 and row["ours_median_s"] > 0 and row["ratio"] > 0
    assert cases[0]["weights_max_abs_diff"] is not None  # full_explicit compares its weights too
    assert fits["full_explicit"]["memory_exponent"] > 1.4  # the n^2 weights show already at these sizes
    assert fits["sliding"]["memory_exponent"] < 1.3 and fits["linear"]["memory_exponent"] < 1.3
