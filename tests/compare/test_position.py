"""Position bias: logit shares of our own models, attention by distance and position-explained weights."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.attention import DecoderLM, EncoderClassifier, TransformerConfig
from attn_probe.capture import capture
from attn_probe.compare.position import (
    DISTANCE_COLUMNS,
    EXPLAINED_COLUMNS,
    LOGIT_SHARE_COLUMNS,
    attention_by_distance,
    position_explained,
    position_logit_share,
)
from tests.capture.families import batch, build
from tests.compare.test_sinks import hand_capture
from tests.methods.models import MODELS, single


def our_model(position: str, *, decoder: bool = False, zero_qk: bool = False):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=100, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, position=position)
    model = (DecoderLM if decoder else EncoderClassifier)(config).eval()
    if zero_qk:  # no content: q = k = 0, so the logits are the position term alone
        stack = model.decoder if decoder else model.encoder
        with torch.no_grad():
            for block in stack.layers:
                for projection in (block.attention.q_proj, block.attention.k_proj):
                    projection.weight.zero_()
                    projection.bias.zero_()
    return model


# ----------------------------------------------------------------------------------------------------
# position_logit_share
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("position", "decoder"), [("alibi", False), ("alibi", True), ("t5", False), ("t5", True)])
def test_position_alone_explains_everything_without_content(position, decoder):
    table = position_logit_share(our_model(position, decoder=decoder, zero_qk=True), batch("bert"))
    assert list(table.columns) == LOGIT_SHARE_COLUMNS
    assert len(table) == 2 * 2 * 4
    assert (table.position_share == 1.0).all()
    assert (table.content_var == 0.0).all() and (table.total_var > 0).all()
    assert table.exact.all() and set(table.variant) == {position}


@pytest.mark.parametrize("decoder", [False, True])
def test_no_position_variant_explains_nothing(decoder):
    table = position_logit_share(our_model("none", decoder=decoder), batch("bert"))
    assert (table.position_share == 0.0).all() and (table.position_var == 0.0).all()
    assert table.exact.all()


def test_valid_pairs_follow_padding_and_causality():
    # lengths (7, 4): an encoder has n² valid pairs, a decoder n (n + 1) / 2.
    encoder = position_logit_share(our_model("alibi"), batch("bert"))
    decoder = position_logit_share(our_model("alibi", decoder=True), batch("bert"))
    assert encoder.groupby("example_id").n_pairs.first().tolist() == [49, 16]
    assert decoder.groupby("example_id").n_pairs.first().tolist() == [28, 10]


@pytest.mark.parametrize(("position", "exact"), [("rotary", False), ("shaw", True), ("t5", True)])
def test_other_variants_give_finite_shares(position, exact):
    table = position_logit_share(our_model(position), batch("bert"))
    assert np.isfinite(table.position_share).all() and (table.position_share <= 1.0 + 1e-12).all()
    assert (table.exact == exact).all()


@pytest.mark.parametrize(("position", "decoder"), [("alibi", False), ("rotary", True)])
def test_logit_share_padding_never_enters(position, decoder):
    model, inputs = our_model(position, decoder=decoder), batch("bert")
    together = position_logit_share(model, inputs)
    for example in range(2):
        alone = position_logit_share(model, single(inputs, example))
        mine = together[together.example_id == example].drop(columns="example_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone.drop(columns="example_id"), rtol=1e-5, atol=1e-6)


def test_logit_share_refuses_what_it_cannot_split():
    with pytest.raises(ValueError, match="enter at the embeddings"):
        position_logit_share(our_model("learned"), batch("bert"))
    with pytest.raises(ValueError, match="attention_by_distance"):
        position_logit_share(build("bert"), batch("bert"))
    with pytest.raises(ValueError, match="input_ids"):
        position_logit_share(our_model("alibi"), {"attention_mask": torch.ones(1, 3)})


# ----------------------------------------------------------------------------------------------------
# attention_by_distance / position_explained on hand-made weights
# ----------------------------------------------------------------------------------------------------
def previous_token(lengths=(5, 3), *, left: bool = False, garbage: float = 7.0):
    """A decoder capture (1 layer, 2 heads) whose every query attends to its previous token (the first to
    itself, the only key it may see). Padded rows and keys hold ``garbage``."""
    n = max(lengths)
    weights = torch.full((len(lengths), 1, 2, n, n), garbage)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for example, length in enumerate(lengths):
        start = n - length if left else 0
        columns = torch.arange(start, start + length)
        mask[example, columns] = 1
        block = torch.zeros(length, length)
        block[0, 0] = 1.0
        block[torch.arange(1, length), torch.arange(length - 1)] = 1.0
        weights[example, :, :, start : start + length, start : start + length] = block
    return hand_capture(weights, mask, main_stack="decoder")


@pytest.mark.parametrize("left", [False, True])
def test_a_previous_token_head_is_all_position(left):
    captured = previous_token(left=left)
    profile = attention_by_distance(captured)
    assert list(profile.columns) == DISTANCE_COLUMNS
    at = profile.set_index(["head", "distance"])
    assert at.loc[(0, -1), "mean_weight"] == 1.0 and at.loc[(1, -1), "share"] == 1.0
    assert at.loc[(0, -1), "count"] == 4 + 2  # rows 1.. of each example; the first row is forced, left out
    assert at.loc[(0, 0), "mean_weight"] == 0.0 and at.loc[(0, 0), "count"] == 6
    assert profile.distance.max() == 0  # causal: no key after the query is allowed
    assert profile.distance.min() == -4

    explained = position_explained(captured)
    assert list(explained.columns) == EXPLAINED_COLUMNS
    assert explained.r2_position.tolist() == pytest.approx([1.0] * 4)
    assert explained.tv_position.tolist() == pytest.approx([0.0] * 4)
    assert explained.r2_position_vs_uniform.tolist() == pytest.approx([1.0] * 4)
    assert (explained.r2_uniform < 1.0).all() and (explained.tv_uniform > 0).all()
    assert explained.n_queries.tolist() == [4, 4, 2, 2]
    assert set(explained.profile) == {"batch"}


def test_distance_tables_ignore_padding():
    padded = previous_token(garbage=float("nan"))
    alone = [previous_token((5,)), previous_token((3,))]
    together = attention_by_distance(padded).set_index(["layer", "head", "distance"])
    parts = [attention_by_distance(c).set_index(["layer", "head", "distance"]) for c in alone]
    counts = parts[0]["count"].add(parts[1]["count"], fill_value=0)
    mass = (parts[0].mean_weight * parts[0]["count"]).add(parts[1].mean_weight * parts[1]["count"], fill_value=0)
    pd.testing.assert_series_equal(together["count"], counts.astype("int64"), check_names=False)
    pd.testing.assert_series_equal(together.mean_weight, mass / counts, check_names=False)
    explained = position_explained(padded)
    assert np.isfinite(explained[EXPLAINED_COLUMNS[5:]]).all().all()


def test_uniform_causal_attention_is_the_uniform_baseline():
    n = 6
    weights = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]  # row i: 1 / (i + 1) on keys <= i
    captured = hand_capture(weights.expand(1, 1, 1, n, n).clone(), main_stack="decoder")
    row = position_explained(captured).iloc[0]
    assert row.r2_uniform == pytest.approx(1.0) and row.tv_uniform == pytest.approx(0.0, abs=1e-6)  # float32 weights
    assert row.r2_position < 1.0  # a mean profile cannot reproduce rows of different lengths exactly
    assert math.isnan(row.r2_position_vs_uniform)  # nothing departs from uniform


def test_max_distance_pools_far_keys_into_the_edges():
    captured = previous_token((6,))
    full = attention_by_distance(captured).set_index(["head", "distance"])
    clipped = attention_by_distance(captured, max_distance=2).set_index(["head", "distance"])
    assert sorted(clipped.loc[0].index) == [-2, -1, 0]
    assert clipped.loc[(0, -2), "count"] == full.loc[0].loc[[-5, -4, -3, -2], "count"].sum()
    assert clipped.loc[(0, -2), "clipped"] and not clipped.loc[(0, -1), "clipped"]
    # A clipped profile of short inputs covers longer ones; an unclipped one does not.
    short, long = previous_token((3,)), previous_token((6,))
    pooled = attention_by_distance(short, max_distance=1)
    # pooled: p(0) = 0, p(-1) = 2/3 (d = -1 and the pooled d = -2 of row 2). On the long input row i >= 1 is
    # then predicted uniform over its i earlier keys: SSE = Σ_{i=1..5} (1 - 1/i) = 5 - H_5; the 20 scored
    # pairs hold weight 5 (mean 1/4), so SS_tot = 5 - 20/16.
    expected = 1 - (5 - sum(1 / i for i in range(1, 6))) / (5 - 20 / 16)
    assert position_explained(long, profile=pooled).r2_position.tolist() == pytest.approx([expected] * 2)
    with pytest.raises(ValueError, match="no mean_weight at distance"):
        position_explained(long, profile=attention_by_distance(short))
    with pytest.raises(ValueError, match="max_distance must be"):
        attention_by_distance(captured, max_distance=-1)


def test_encoder_profiles_include_keys_on_both_sides():
    n = 4
    weights = torch.full((1, 1, 1, n, n), 1.0 / n)
    profile = attention_by_distance(hand_capture(weights))  # an encoder: bidirectional
    assert profile.distance.tolist() == list(range(-(n - 1), n))
    assert profile.mean_weight.tolist() == pytest.approx([1.0 / n] * (2 * n - 1))
    assert profile["count"].tolist() == [1, 2, 3, 4, 3, 2, 1]
    assert profile.share.sum() == pytest.approx(1.0)


def test_a_given_profile_must_fit_the_capture():
    captured = previous_token()
    with pytest.raises(ValueError, match="does not cover every head"):
        position_explained(captured, profile=attention_by_distance(captured).query("head == 0"))
    with pytest.raises(ValueError, match="attention_by_distance table"):
        position_explained(captured, profile=pd.DataFrame({"layer": [0]}))
    given = position_explained(captured, profile=attention_by_distance(captured))
    assert set(given.profile) == {"given"}


# ----------------------------------------------------------------------------------------------------
# real tiny models
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["hf-bert", "hf-llama"])
def test_real_models_batch_equals_single_examples(model_name):
    model, inputs = MODELS[model_name]()
    captured = capture(model, inputs, measure_drift=False)
    profile = attention_by_distance(captured)
    assert (profile.groupby(["layer", "head"]).share.sum() - 1).abs().max() < 1e-9
    together = position_explained(captured)
    columns = EXPLAINED_COLUMNS[5:]
    assert np.isfinite(together[columns]).all().all()
    assert (together.r2_position <= 1 + 1e-9).all()
    for example in range(2):
        alone = position_explained(
            capture(model, single(inputs, example), measure_drift=False), profile=profile
        )  # the same (batch) profile, so only padding could make a difference
        mine = together[together.example_id == example].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine[columns], alone[columns], rtol=0, atol=1e-6)
