"""Attention sinks: hand-built captures with known answers, padding, defaults, errors, real tiny models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.capture import AttentionCapture, capture
from attn_probe.capture.capture import StackCapture
from attn_probe.compare.sinks import SINK_COLUMNS, attention_sinks, head_gram, value_norms
from tests.methods.models import MODELS, single


def hand_capture(
    weights: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    values: torch.Tensor | None = None,
    output_weight: torch.Tensor | None = None,
    main_stack: str = "encoder",
    special: torch.Tensor | None = None,
    extra_stacks: tuple[str, ...] = (),
) -> AttentionCapture:
    """An :class:`AttentionCapture` around given ``weights [batch, layers, heads, n, n]``."""
    batch, _, _, n, _ = weights.shape
    attention_mask = torch.ones(batch, n, dtype=torch.long) if attention_mask is None else attention_mask

    def stack(name: str) -> StackCapture:
        return StackCapture(
            stack=name,
            site_names=[],
            weights=weights,
            values=values,
            head_outputs=None,
            output_weight=output_weight,
            output_bias=None,
            position_bias=None,
        )

    return AttentionCapture(
        stacks={name: stack(name) for name in (main_stack, *extra_stacks)},
        main_stack=main_stack,
        logits=None,
        outputs=None,
        input_ids=torch.zeros(batch, n, dtype=torch.long),
        attention_mask=attention_mask,
        family="hand",
        mechanism="ours",
        backend="-",
        batch=None if special is None else SimpleNamespace(special_tokens_mask=special),  # type: ignore[arg-type]
    )


def sink_capture() -> AttentionCapture:
    """1 example, 1 layer, 2 heads, 4 tokens; token 0 has a zero value vector in head 0.

    Head 0: every row puts 0.97 on token 0 and 0.01 on each other token; value norms [0, 1, 2, 2].
    Head 1: uniform rows; every value norm 1. W_O is the identity, so ||f(x_j)|| = ||v_j||.
    """
    n, d = 4, 2
    weights = torch.zeros(1, 1, 2, n, n)
    weights[0, 0, 0] = torch.tensor([0.97, 0.01, 0.01, 0.01])
    weights[0, 0, 1] = 0.25
    values = torch.zeros(1, 1, 2, n, d)
    values[0, 0, 0, 1:] = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    values[0, 0, 1] = torch.tensor([1.0, 0.0])
    special = torch.tensor([[True, False, False, False]])
    return hand_capture(weights, values=values, output_weight=torch.eye(2 * d).unsqueeze(0), special=special)


def test_attention_on_a_zero_value_sink_carries_nothing():
    table = attention_sinks(sink_capture())
    assert list(table.columns) == SINK_COLUMNS
    sink_head, uniform_head = table.iloc[0], table.iloc[1]
    assert sink_head.special_share == pytest.approx(0.97)
    assert sink_head.first_share == pytest.approx(0.97)
    assert sink_head.special_share_norm == 0.0  # weight on a zero vector adds nothing
    assert sink_head.first_share_norm == 0.0
    assert sink_head.value_norm_ratio == 0.0  # 0 / mean(1, 2, 2)
    assert uniform_head.special_share == pytest.approx(0.25)
    assert uniform_head.special_share_norm == pytest.approx(0.25)  # equal norms: the raw share
    assert uniform_head.value_norm_ratio == pytest.approx(1.0)
    assert table.n_queries.tolist() == [4, 4] and table.n_special.tolist() == [1, 1]


def test_norm_weighting_follows_kobayashi():
    # Head 0, any row: contributions α_j ||f(x_j)|| = [0, 0.01, 0.02, 0.02]; token 1 (norm 1) gets 0.01 / 0.05.
    table = attention_sinks(sink_capture(), special=torch.tensor([[False, True, False, False]]))
    assert table.iloc[0].special_share == pytest.approx(0.01)
    assert table.iloc[0].special_share_norm == pytest.approx(0.2)
    assert table.iloc[0].value_norm_ratio == pytest.approx(1 / (4 / 3))  # 1 / mean(0, 2, 2)


def test_all_weight_on_a_zero_value_leaves_the_norm_share_undefined():
    captured = sink_capture()
    captured.weights[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    row = attention_sinks(captured).iloc[0]
    assert row.special_share == 1.0
    assert math.isnan(row.special_share_norm)  # no row adds anything: no share to speak of


def test_value_norms_equal_the_explicit_projection():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 5, 4, generator=generator, dtype=torch.float64)  # [L, H, n, d]
    output_weight = torch.randn(2, 7, 3 * 4, generator=generator, dtype=torch.float64)  # [L, E, H·d]
    expected = torch.zeros(2, 3, 5, dtype=torch.float64)
    for layer in range(2):
        for head in range(3):
            w_o = output_weight[layer, :, head * 4 : (head + 1) * 4]  # [E, d]: head h's slice of W_O
            expected[layer, head] = (values[layer, head] @ w_o.T).norm(dim=-1)
    torch.testing.assert_close(value_norms(values, output_weight), expected)
    assert head_gram(output_weight, 3).shape == (2, 3, 4, 4)


def test_rows_target_reads_one_row_per_example():
    n = 4
    weights = torch.zeros(1, 1, 1, n, n)
    for row in range(n):
        weights[0, 0, 0, row, row] = 1.0  # each token attends to itself only
    encoder = hand_capture(weights)
    assert attention_sinks(encoder, rows="target", norm=False).first_share.item() == 1.0  # row 0 -> token 0
    decoder = hand_capture(weights, main_stack="decoder")
    target = attention_sinks(decoder, rows="target", norm=False).iloc[0]
    assert target.first_share == 0.0 and target.n_queries == 1  # the last row attends to the last token
    chosen = attention_sinks(encoder, rows=torch.tensor([2]), norm=False).iloc[0]
    assert chosen.first_share == 0.0 and chosen.special_share == 0.0  # token 2 is neither first nor last
    assert attention_sinks(encoder, norm=False).first_share.item() == pytest.approx(1 / n)


def test_default_sinks_without_a_tokenized_batch():
    n = 5
    weights = torch.full((2, 1, 1, n, n), 1.0 / n)
    right = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    left = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    for mask in (right, left):
        encoder = attention_sinks(hand_capture(weights, mask), norm=False)
        assert encoder.n_special.tolist() == [2, 2]  # first and last real token
        decoder = attention_sinks(hand_capture(weights, mask, main_stack="decoder"), norm=False)
        assert decoder.n_special.tolist() == [1, 1]  # the first real token (BOS)
    tokenized = hand_capture(weights, right, special=torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 1, 1]]).bool())
    assert attention_sinks(tokenized, norm=False).n_special.tolist() == [1, 2]  # padding is never a sink


def test_padding_never_enters():
    model, inputs = MODELS["hf-bert"]()
    together = attention_sinks(capture(model, inputs, measure_drift=False))
    for example in range(2):
        alone = attention_sinks(capture(model, single(inputs, example), measure_drift=False))
        mine = together[together.example_id == example].drop(columns="example_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone.drop(columns="example_id"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_name", ["hf-bert", "our-decoder"])
def test_real_tiny_models(model_name):
    model, inputs = MODELS[model_name]()
    for rows in ("all", "target"):
        table = attention_sinks(capture(model, inputs), rows=rows)
        assert len(table) == 2 * 2 * 4
        for column in SINK_COLUMNS[5:]:
            assert np.isfinite(table[column]).all(), column
        shares = table[["special_share", "first_share", "special_share_norm", "first_share_norm"]]
        assert ((shares >= 0) & (shares <= 1 + 1e-6)).all().all()
        assert (table.special_share >= table.first_share - 1e-6).all()  # the first real token is a sink


def test_errors_say_what_to_do():
    model, inputs = MODELS["hf-bert"]()
    no_values = capture(model, inputs, keep_values=False)
    with pytest.raises(ValueError, match="keep_values=True"):
        attention_sinks(no_values)
    assert "special_share_norm" not in attention_sinks(no_values, norm=False).columns
    captured = sink_capture()
    captured.stacks["encoder"].output_weight = None
    with pytest.raises(ValueError, match="output projection"):
        attention_sinks(captured)
    with pytest.raises(ValueError, match=r"\[batch, n\] mask"):
        attention_sinks(sink_capture(), special=torch.tensor([True, False, False, False]))
    with pytest.raises(ValueError, match="rows must be"):
        attention_sinks(sink_capture(), rows="first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the columns"):
        attention_sinks(sink_capture(), rows=torch.tensor([7]))
    weights = torch.full((1, 1, 1, 3, 3), 1 / 3)
    padded = hand_capture(weights, torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="padding columns"):
        attention_sinks(padded, rows=torch.tensor([2]), norm=False)
    with pytest.raises(ValueError, match="does not attend over input_ids"):
        attention_sinks(hand_capture(weights, extra_stacks=("cross",)), stack="cross", norm=False)
    with pytest.raises(ValueError, match="no stack"):
        attention_sinks(hand_capture(weights), stack="decoder", norm=False)


def test_an_all_padding_example_gives_nan_rows():
    weights = torch.full((2, 1, 1, 3, 3), 1 / 3)
    table = attention_sinks(hand_capture(weights, torch.tensor([[1, 1, 1], [0, 0, 0]])), norm=False)
    assert table.n_queries.tolist() == [3, 0]
    assert math.isnan(table.special_share[1]) and table.special_share[0] == pytest.approx(2 / 3)
