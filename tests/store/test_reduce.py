"""Attention reduced to per layer / head summaries, and the chosen sample of full matrices."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.store import SUMMARY_COLUMNS, StoreError, select_sample, summarise_attention, summarise_batch


def hand_made() -> np.ndarray:
    """One layer, two heads, four positions, the last one padding."""
    weights = np.zeros((1, 2, 4, 4))
    weights[0, 0, :3, :3] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]]  # causal-like
    weights[0, 1, :3, :3] = 1 / 3  # uniform over the real keys
    weights[0, :, 3, :] = 0.25  # the padded query row: never read
    return weights


def test_summary_values_by_hand():
    real = np.array([True, True, True, False])
    special = np.array([True, False, True, False])
    frame = summarise_attention(hand_made(), special, real, example_id=7)
    assert list(frame.columns) == SUMMARY_COLUMNS
    assert frame[["example_id", "layer", "head", "n_queries", "n_keys"]].values.tolist() == [
        [7, 0, 0, 3, 3],
        [7, 0, 1, 3, 3],
    ]
    first, uniform = frame.iloc[0], frame.iloc[1]
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert first["entropy"] == pytest.approx((0 + h(0.5, 0.5) + h(0.5, 0.25, 0.25)) / 3)
    assert uniform["entropy"] == pytest.approx(math.log(3))
    assert first["max_weight"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert first["special_share"] == pytest.approx((1 + 0.5 + 0.75) / 3)
    assert first["first_share"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert first["self_share"] == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert first["mean_distance"] == pytest.approx((0 + 0.5 + (1 + 0.25)) / 3)
    assert uniform["mean_distance"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert uniform["special_share"] == pytest.approx(2 / 3)


def test_one_row_and_no_special():
    frame = summarise_attention(hand_made(), real=np.array([1, 1, 1, 0]), rows=2)
    assert frame["n_queries"].tolist() == [1, 1]
    assert frame["first_share"].tolist() == pytest.approx([0.5, 1 / 3])
    assert frame["special_share"].isna().all()
    with pytest.raises(StoreError, match="not the position of a real token"):
        summarise_attention(hand_made(), real=np.array([1, 1, 1, 0]), rows=3)


def test_rows_without_keys_are_left_out():
    weights = hand_made()
    weights[0, 0, 0] = 0.0  # a query with no key: all-zero row
    frame = summarise_attention(weights, real=np.array([1, 1, 1, 0], dtype=bool))
    assert frame["n_queries"].tolist() == [2, 3]
    assert frame.loc[0, "max_weight"] == pytest.approx(0.5)


def test_torch_and_batches():
    weights = torch.softmax(torch.randn(2, 3, 2, 5, 5), dim=-1)  # [batch, layers, heads, n, n]
    real = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    frame = summarise_batch(weights.to(torch.bfloat16), [10, 11], real=real)
    assert len(frame) == 2 * 3 * 2
    assert frame["example_id"].unique().tolist() == [10, 11]
    assert frame.groupby("example_id")["n_keys"].first().tolist() == [5, 3]
    single = summarise_attention(weights[0].numpy(), example_id=10)
    pd.testing.assert_frame_equal(frame.iloc[:6].reset_index(drop=True), single, atol=1e-2)
    with pytest.raises(StoreError, match=r"\[layers, heads, n, n\]"):
        summarise_attention(weights)


def test_select_sample_is_stable():
    ids = list(range(100))
    chosen = select_sample(ids, 5, seed=3)
    assert len(chosen) == 5
    assert chosen <= set(ids)
    assert select_sample(reversed(ids), 5, seed=3) == chosen  # the order of the dataset does not matter
    assert select_sample(ids, 5, seed=4) != chosen
    assert select_sample([1, 2], 5) == {1, 2}
