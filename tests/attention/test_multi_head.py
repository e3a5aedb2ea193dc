"""MultiHeadAttention does what the formula says, on both paths, for every position variant."""

import math

import pytest
import torch

from attn_probe.attention import POSITION_VARIANTS, MultiHeadAttention, make_position, record

EMBED, HEADS, HEAD_DIM = 32, 4, 8


def attention(position: str = "none", causal: bool = False, **kwargs) -> MultiHeadAttention:
    module = make_position(position, embed_dim=EMBED, num_heads=HEADS, head_dim=HEAD_DIM, causal=causal)
    return MultiHeadAttention(EMBED, HEADS, position=module, **kwargs).eval()


def padding_mask() -> torch.Tensor:
    mask = torch.ones(3, 7, dtype=torch.long)  # [batch, k]
    mask[1, 4:] = 0  # a padded example
    mask[2, :] = 0  # an example with no key at all
    return mask


@pytest.mark.parametrize("position", POSITION_VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
def test_rows_sum_to_one_and_masked_keys_get_exactly_zero(position, causal):
    module = attention(position, causal)
    x = torch.randn(3, 7, EMBED)
    mask = padding_mask()
    _, weights = module(x, mask=mask, causal=causal, need_weights=True)
    assert weights.shape == (3, HEADS, 7, 7)
    allowed = mask.bool()[:, None, None, :].expand_as(weights)
    if causal:
        allowed = allowed & torch.ones(7, 7, dtype=torch.bool).tril()
    assert torch.all(weights[~allowed] == 0.0)  # exactly zero, not merely small
    rows_with_keys = allowed.any(-1)
    sums = weights.sum(-1)
    torch.testing.assert_close(sums[rows_with_keys], torch.ones_like(sums[rows_with_keys]), rtol=0, atol=1e-6)
    assert torch.all(sums[~rows_with_keys] == 0.0)


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_give_zero_head_output_not_nan(need_weights):
    module = attention("alibi")
    x = torch.randn(3, 7, EMBED)
    output, _ = module(x, mask=padding_mask(), need_weights=need_weights)
    assert torch.isfinite(output).all()
    # No key to read from: the head output is zero, so only the output projection's bias remains.
    torch.testing.assert_close(output[2], module.out_proj.bias.expand(7, EMBED))


@pytest.mark.parametrize("position", POSITION_VARIANTS)
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_explicit_paths_agree(position, use_mask, causal):
    module = attention(position, causal)
    x = torch.randn(3, 7, EMBED)
    mask = padding_mask() if use_mask else None
    fused, none = module(x, mask=mask, causal=causal)
    explicit, _ = module(x, mask=mask, causal=causal, need_weights=True)
    assert none is None
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-6)


@pytest.mark.parametrize("position", POSITION_VARIANTS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_attention_never_reads_the_future(position, need_weights):
    module = attention(position, causal=True)
    x = torch.randn(2, 9, EMBED)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 3, EMBED)  # rewrite the last three tokens
    before, _ = module(x, causal=True, need_weights=need_weights)
    after, _ = module(changed, causal=True, need_weights=need_weights)
    torch.testing.assert_close(before[:, :6], after[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(before[:, 6:], after[:, 6:])  # the check can fail: later rows did change


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_logits_are_q_dot_k_over_sqrt_dk_times_temperature(temperature):
    module = attention(temperature=temperature)
    x = torch.randn(2, 5, EMBED)
    with record(module, ["hook_q", "hook_k", "hook_logits"]) as seen:
        module(x, need_weights=True)
    q, k = seen["hook_q"], seen["hook_k"]  # [b, h, n, d]
    expected = torch.einsum("bhqd,bhkd->bhqk", q, k) / (math.sqrt(HEAD_DIM) * temperature)
    torch.testing.assert_close(seen["hook_logits"], expected)
    # and the projections are what a textbook writes: q = x Wq^T + b
    manual_q = (x @ module.q_proj.weight.T + module.q_proj.bias).view(2, 5, HEADS, HEAD_DIM).transpose(1, 2)
    torch.testing.assert_close(q, manual_q)


def test_explicit_scale_replaces_the_square_root():
    module = attention(scale=1.0)
    x = torch.randn(1, 4, EMBED)
    with record(module, ["hook_q", "hook_k", "hook_logits"]) as seen:
        module(x, need_weights=True)
    torch.testing.assert_close(seen["hook_logits"], seen["hook_q"] @ seen["hook_k"].transpose(-1, -2))


def test_grouped_query_attention_equals_full_attention_with_shared_kv_heads():
    grouped = MultiHeadAttention(EMBED, HEADS, num_kv_heads=2).eval()
    full = MultiHeadAttention(EMBED, HEADS).eval()
    with torch.no_grad():
        full.q_proj.load_state_dict(grouped.q_proj.state_dict())
        full.out_proj.load_state_dict(grouped.out_proj.state_dict())
        for name in ("k_proj", "v_proj"):  # kv head g serves query heads 2g and 2g + 1
            source, target = getattr(grouped, name), getattr(full, name)
            target.weight.copy_(source.weight.view(2, 1, HEAD_DIM, EMBED).repeat(1, 2, 1, 1).reshape(-1, EMBED))
            target.bias.copy_(source.bias.view(2, 1, HEAD_DIM).repeat(1, 2, 1).reshape(-1))
    x = torch.randn(2, 6, EMBED)
    for need_weights in (False, True):
        torch.testing.assert_close(
            grouped(x, causal=True, need_weights=need_weights)[0], full(x, causal=True, need_weights=need_weights)[0]
        )


def test_cross_attention_with_other_widths():
    module = MultiHeadAttention(EMBED, HEADS, kdim=12, vdim=20).eval()
    query, key, value = torch.randn(2, 3, EMBED), torch.randn(2, 5, 12), torch.randn(2, 5, 20)
    output, weights = module(query, key, value, mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5]), need_weights=True)
    assert output.shape == (2, 3, EMBED) and weights.shape == (2, HEADS, 3, 5)
    assert torch.all(weights[0, :, :, 3:] == 0)
    fused, _ = module(query, key, value, mask=torch.tensor([[1, 1, 1, 0, 0], [1] * 5]))
    torch.testing.assert_close(fused, output, rtol=0, atol=1e-6)


def test_per_example_positions_shift_nothing_for_relative_variants():
    """Relative variants only see offsets: shifting all positions by 5 changes nothing."""
    for position in ("shaw", "t5", "alibi", "rotary"):
        module = attention(position)
        x = torch.randn(2, 6, EMBED)
        plain, _ = module(x, need_weights=True)
        shifted, _ = module(x, positions=torch.arange(6).repeat(2, 1) + 5, need_weights=True)
        torch.testing.assert_close(plain, shifted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("position", POSITION_VARIANTS)
def test_split_logits_adds_up_to_the_logits_the_forward_pass_uses(position):
    module = attention(position)
    x = torch.randn(2, 6, EMBED)
    parts = module.split_logits(x)
    with record(module, ["hook_logits"]) as seen:
        module(x, need_weights=True)
    torch.testing.assert_close(parts.total, seen["hook_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(parts.content + parts.position, parts.total, rtol=0, atol=1e-5)
    if position == "none":
        assert torch.all(parts.position == 0)
    else:
        assert parts.position.abs().max() > 1e-4  # position really contributes
    assert parts.exact == (position in ("none", "shaw", "t5", "alibi"))


def test_weights_carry_gradients():
    module = attention("t5")
    x = torch.randn(1, 5, EMBED, requires_grad=True)
    _, weights = module(x, need_weights=True)
    weights[0, 0, 0, 1].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("mask", "error", "words"),
    [
        (torch.ones(3, 7), TypeError, "boolean or 0/1 integer"),
        (torch.full((3, 7), 2), ValueError, "only 0"),
        (torch.ones(3, 8, dtype=torch.bool), ValueError, "does not fit"),
        (torch.ones(7, dtype=torch.bool), ValueError, "dimensions"),
    ],
)
def test_bad_masks_are_explained(mask, error, words):
    with pytest.raises(error, match=words):
        attention()(torch.randn(3, 7, EMBED), mask=mask)


def test_bad_shapes_are_explained():
    module = attention()
    with pytest.raises(ValueError, match="expects 32"):
        module(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match=r"\[batch, q, embed\]"):
        module(torch.randn(4, EMBED))
    with pytest.raises(ValueError, match="both key and value"):
        module(torch.randn(1, 4, EMBED), torch.randn(1, 4, EMBED))
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(30, 4)
