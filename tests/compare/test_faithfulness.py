"""Faithfulness by erasure: known answers on a model that reads one token, erasure equal to doing it by hand,
padded batches equal to single examples, special tokens kept, batching, errors."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.attention import DecoderLM, EncoderClassifier, ModelOutput, TransformerConfig
from attn_probe.capture import Target, target_value, tokenize
from attn_probe.compare.faithfulness import (
    comprehensiveness_sufficiency,
    decision_flips,
    deletion_insertion,
    faithfulness_report,
)
from attn_probe.methods import ExplainContext, MethodInfo, explain
from attn_probe.methods.perturbation import leave_one_out
from tests.capture.families import batch, build
from tests.methods.models import MODELS, single

KEY = 7  # the one token the hand-built models read
ANSWER, OTHER = 5, 6  # the key LM's next tokens: ANSWER once KEY has been seen, else OTHER
HAND = MethodInfo(
    id="hand", family="perturbation", needs_gradients=False, cost="-", sign="signed", description="set by the test"
)


class KeyClassifier(EncoderClassifier):
    """Our encoder, whose logits are ``[0.5, number of KEY tokens attended]``: class 1 iff KEY is present.

    The encoder still runs (attention capture sees its layers), but the output depends on KEY alone."""

    def forward(self, input_ids, attention_mask=None, **kwargs):
        out = super().forward(input_ids, attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        count = ((input_ids == KEY) & mask.bool()).sum(dim=1).float()  # [batch]
        logits = torch.stack([torch.full_like(count, 0.5), count], dim=1)  # [batch, 2]
        return ModelOutput(logits, out.last_hidden_state, out.hidden_states, out.attentions)


class KeyLM(DecoderLM):
    """Our decoder, whose next-token logits at position t are 2 * (KEY seen up to t) for ANSWER, 1 for OTHER."""

    def forward(self, input_ids, attention_mask=None, **kwargs):
        out = super().forward(input_ids, attention_mask, **kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        seen = ((input_ids == KEY) & mask.bool()).long().cumsum(dim=1).float()  # [batch, n]
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        logits[..., ANSWER] = 2 * seen
        logits[..., OTHER] = 1.0
        return ModelOutput(logits, out.last_hidden_state, out.hidden_states, out.attentions)


def small_config(**extra) -> TransformerConfig:
    return TransformerConfig(vocab_size=100, embed_dim=16, num_heads=2, num_layers=1, ffn_dim=32, **extra)


def key_batch() -> dict[str, torch.Tensor]:
    """Two right-padded examples (6 and 4 tokens) holding KEY once, at columns 2 and 1."""
    ids = torch.tensor([[11, 12, KEY, 14, 15, 16], [21, KEY, 23, 24, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return {"input_ids": ids, "attention_mask": mask}


def hand(ctx: ExplainContext, scores) -> object:
    """An explanation with the given scores ``[batch, n]`` for the context's target."""
    return ctx.finish(HAND, torch.as_tensor(scores, dtype=torch.float32))


def key_first(inputs) -> torch.Tensor:
    """Scores ranking KEY first, the other tokens after it in a fixed order."""
    return torch.where(inputs["input_ids"] == KEY, 10.0, torch.arange(inputs["input_ids"].shape[1]) / 10)


def key_last(inputs) -> torch.Tensor:
    return torch.where(inputs["input_ids"] == KEY, -10.0, torch.arange(inputs["input_ids"].shape[1]) / 10)


@pytest.fixture(scope="module")
def key_classifier():
    torch.manual_seed(0)
    return KeyClassifier(small_config()).eval()


@pytest.fixture(scope="module")
def key_lm():
    torch.manual_seed(0)
    return KeyLM(small_config(position="rotary", prenorm=True, pooler=False)).eval()


# ----------------------------------------------------------------------------------------------------
# known answers: a model that reads one token
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["replace", "drop"])
def test_ranking_the_key_token_first_is_maximally_comprehensive_and_flips_at_once(key_classifier, mode):
    inputs = key_batch()
    ctx = ExplainContext(key_classifier, inputs)
    assert ctx.target.ids.tolist() == [1, 1]  # KEY present: class 1
    good = hand(ctx, key_first(inputs))
    per_bin, per_example = comprehensiveness_sufficiency(ctx, good, mode=mode)
    # f(x) = 1 (the logit of class 1); without KEY it is 0, with KEY alone still 1
    assert np.allclose(per_bin["comprehensiveness"], 1.0) and np.allclose(per_bin["sufficiency"], 0.0)
    p_with, p_without = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.5))
    assert np.allclose(per_bin["comprehensiveness_probability"], p_with - p_without)
    assert np.allclose(per_example["comprehensiveness"], 1.0)
    assert per_bin["k"].tolist() == [1, 1, 1, 2, 3, 1, 1, 1, 1, 2]  # ceil(f * m), at least 1; m = 6, then 4

    flips = decision_flips(ctx, good, mode=mode, n_random=20, seed=0)
    assert flips["flip_k"].tolist() == [1, 1] and flips["flipped"].all()
    assert np.allclose(flips["flip_fraction"], [1 / 6, 1 / 4])
    # a random order reaches KEY at a uniformly random step: later on average
    assert (flips["random_flip_k_mean"] > 1.5).all()
    assert np.allclose(flips["random_flips_fraction"], 1.0)  # deleting everything always removes KEY

    curves = deletion_insertion(ctx, good, mode=mode, n_random=20)
    summary = curves.summary.set_index(["example_id", "curve"])
    for i, m in enumerate([6, 4]):
        # deletion: 1 at k = 0, then 0: mean drop m / (m + 1), the most any order can reach
        assert summary.loc[(i, "deletion"), "aopc"] == pytest.approx(m / (m + 1))
        assert summary.loc[(i, "insertion"), "aopc"] == pytest.approx(m / (m + 1))
        assert summary.loc[(i, "deletion"), "random_aopc_mean"] < m / (m + 1)
        assert summary.loc[(i, "deletion"), "aopc_minus_random"] > 0
        assert summary.loc[(i, "deletion"), "auc"] == pytest.approx(0.5 / m)  # trapezoid of [1, 0, 0, ...]

    bad = hand(ctx, key_last(inputs))
    flips = decision_flips(ctx, bad, mode=mode, n_random=0)
    assert flips["flip_k"].tolist() == [6, 4]  # KEY is deleted last
    assert flips["random_flip_k_mean"].isna().all()  # no random orders asked for
    per_bin, _ = comprehensiveness_sufficiency(ctx, bad, mode=mode, bins=(0.5,))
    assert np.allclose(per_bin["comprehensiveness"], 0.0) and np.allclose(per_bin["sufficiency"], 1.0)


def test_a_decision_that_never_flips_is_na(key_classifier):
    inputs = {"input_ids": torch.tensor([[KEY, KEY, 11]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    ctx = ExplainContext(key_classifier, inputs, target=Target.class_logit(0))  # explain class 0 ...
    # ... while the model predicts class 1; deleting tokens one at a time flips it only once both KEYs go
    flips = decision_flips(ctx, hand(ctx, torch.tensor([[0.0, 0.0, 1.0]])), n_random=5)
    assert flips["predicted"].tolist() == [1]
    assert flips["flip_k"].tolist() == [3] and flips["flip_fraction"].tolist() == [1.0]
    # a model that never changes its mind
    inputs = {"input_ids": torch.tensor([[11, 12, 13]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    ctx = ExplainContext(key_classifier, inputs)
    flips = decision_flips(ctx, hand(ctx, torch.tensor([[3.0, 2.0, 1.0]])), n_random=5)
    assert not flips["flipped"][0] and flips["flip_k"].isna().all() and flips["flip_fraction"].isna().all()
    assert str(flips["flip_k"].dtype) == "Int64"
    assert flips["random_flips_fraction"].tolist() == [0.0] and flips["random_flip_k_mean"].isna().all()


@pytest.mark.parametrize("mode", ["replace", "drop"])
def test_language_model_flips_when_the_key_token_goes(key_lm, mode):
    inputs = key_batch()
    ctx = ExplainContext(key_lm, inputs)
    assert ctx.target.ids.tolist() == [ANSWER, ANSWER]
    good = hand(ctx, key_first(inputs))
    flips = decision_flips(ctx, good, mode=mode, n_random=10)
    assert flips["flip_k"].tolist() == [1, 1]
    assert flips["n_erasable"].tolist() == [5, 3]  # the first token is kept: everything is conditioned on it
    per_bin, _ = comprehensiveness_sufficiency(ctx, good, mode=mode, bins=(0.2,))
    # log p(ANSWER) with KEY seen: logits (2, 1, 0...) -> drops to logits (0, 1, 0, ...) without it
    with_key = 2 - math.log(math.exp(2) + math.e + 98)
    without = 0 - math.log(1 + math.e + 98)
    assert np.allclose(per_bin["target_full"], with_key, atol=1e-5)
    assert np.allclose(per_bin["comprehensiveness"], with_key - without, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# erasure equals a manual re-run with edited ids
# ----------------------------------------------------------------------------------------------------
def target_alone(ctx: ExplainContext, i: int, ids: list[int]) -> float:
    """Example ``i``'s target on the unpadded sequence ``ids`` (an LM reads its last position)."""
    resolved = ctx.target.take([i])
    if resolved.positions is not None:
        resolved = replace(resolved, positions=torch.tensor([len(ids) - 1]), max_position=len(ids) - 1)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = ctx.logits(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return float(target_value(resolved, logits)[0])


@pytest.mark.parametrize("model_name", ["our-encoder", "our-decoder", "hf-llama"])
@pytest.mark.parametrize("mode", ["replace", "drop"])
def test_erasure_equals_editing_the_ids_by_hand(model_name, mode):
    model, inputs = MODELS[model_name]()
    ctx = ExplainContext(model, inputs)
    # the last token first: for a language model that is the predicting token itself
    scores = torch.arange(inputs["input_ids"].shape[1], dtype=torch.float32).expand_as(inputs["input_ids"])
    explanation = hand(ctx, scores.clone())
    per_bin, _ = comprehensiveness_sufficiency(ctx, explanation, mode=mode, bins=(0.2, 0.5))
    lm = model_name != "our-encoder"
    for row in per_bin.itertuples():
        i = row.example_id
        ids = inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist()
        movable = list(range(1 if lm else 0, len(ids)))  # an LM keeps its first token
        top = sorted(movable, reverse=True)[: row.k]  # later columns score higher
        rest = [c for c in movable if c not in top]
        assert row.n_erasable == len(movable)
        if mode == "replace":  # replaced tokens stay in place: an LM reads at the same (last) column
            without = [ctx.replacement_id() if c in top else t for c, t in enumerate(ids)]
            only = [ctx.replacement_id() if c in rest else t for c, t in enumerate(ids)]
        else:  # deleted: an LM reads at the last kept token
            without = [t for c, t in enumerate(ids) if c not in top]
            only = [t for c, t in enumerate(ids) if c not in rest]
        full, without_value, only_value = (target_alone(ctx, i, x) for x in (ids, without, only))
        assert row.target_full == pytest.approx(full, abs=1e-4)
        assert row.target_without_top == pytest.approx(without_value, abs=1e-4)
        assert row.target_top_only == pytest.approx(only_value, abs=1e-4)


def test_leave_one_out_ranking_deletes_the_largest_single_drop_first():
    """In replace mode, deleting leave-one-out's top token is the largest single-token drop there is."""
    model, inputs = MODELS["our-encoder"]()
    ctx = ExplainContext(model, inputs)
    loo = leave_one_out(ctx)
    curves = deletion_insertion(ctx, loo, n_random=30, seed=1).curves
    step1 = curves[(curves.curve == "deletion") & (curves.step == 1)].set_index(["example_id", "order"])["value"]
    full = curves[(curves.curve == "deletion") & (curves.step == 0)].set_index(["example_id", "order"])["value"]
    for i in range(2):
        drop = full[(i, "explanation")] - step1[(i, "explanation")]
        assert drop == pytest.approx(float(loo.scores[i].max()), abs=1e-5)  # LOO's own definition
        assert drop >= full[(i, "random")] - step1[(i, "random")] - 1e-6


# ----------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["our-encoder", "hf-llama"])
@pytest.mark.parametrize("mode", ["replace", "drop"])
def test_padded_batch_equals_single_examples(model_name, mode):
    model, inputs = MODELS[model_name]()
    options = {"mode": mode, "n_random": 3, "seed": 4, "steps": 4}
    ctx = ExplainContext(model, inputs)
    together = faithfulness_report(ctx, {"leave_one_out": leave_one_out(ctx)}, **options)
    for i in range(inputs["input_ids"].shape[0]):
        alone_ctx = ExplainContext(model, single(inputs, i))
        alone = faithfulness_report(alone_ctx, [leave_one_out(alone_ctx)], **options)
        for name in ("eraser_bins", "eraser", "curves", "curve_summary", "flips"):
            mine = getattr(together, name)
            mine = mine[mine.example_id == i].drop(columns="example_id").reset_index(drop=True)
            theirs = getattr(alone, name).drop(columns="example_id")
            pd.testing.assert_frame_equal(mine, theirs, check_exact=False, atol=1e-4, rtol=0)


def test_left_padded_language_model_batch_equals_single_examples():
    model, inputs = MODELS["our-decoder"]()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    lengths = mask.sum(dim=1)
    left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for i, length in enumerate(lengths.tolist()):  # the same examples, padded on the left
        left_ids[i, ids.shape[1] - length :] = ids[i, :length]
        left_mask[i, ids.shape[1] - length :] = 1
    left = {"input_ids": left_ids, "attention_mask": left_mask}
    ctx = ExplainContext(model, left)
    scores = hand(ctx, torch.arange(ids.shape[1], dtype=torch.float32).expand_as(ids).clone())
    together = comprehensiveness_sufficiency(ctx, scores, mode="drop", bins=(0.5,)).per_bin
    for i in range(2):
        alone_ctx = ExplainContext(model, single(left, i))
        n = int(lengths[i])
        alone_scores = hand(alone_ctx, torch.arange(ids.shape[1] - n, ids.shape[1], dtype=torch.float32)[None])
        alone = comprehensiveness_sufficiency(alone_ctx, alone_scores, mode="drop", bins=(0.5,)).per_bin
        # the same tokens are kept, re-padded on the left; our rotary decoder sees relative positions only,
        # so the shifted columns of the left-padded rows do not change the values
        assert together.loc[i, "k"] == alone.loc[0, "k"]
        assert together.loc[i, "comprehensiveness"] == pytest.approx(alone.loc[0, "comprehensiveness"], abs=1e-4)
        assert together.loc[i, "sufficiency"] == pytest.approx(alone.loc[0, "sufficiency"], abs=1e-4)


def test_one_forward_pass_per_level_and_length_and_batch_size_caps_it(monkeypatch):
    import attn_probe.methods.passes as passes

    model, inputs = MODELS["our-encoder"]()
    ctx = ExplainContext(model, inputs)
    explanation = leave_one_out(ctx)
    lengths = inputs["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # the batch is padded: the lengths matter below
    calls, widths = [], []

    def record(module, args, kwargs):
        calls.append(1)
        widths.append(int(kwargs["input_ids"].shape[1]) if "input_ids" in kwargs else int(args[0].shape[1]))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        monkeypatch.setattr(passes, "CPU_PADDING_ALLOWANCE", float("inf"))
        whole = comprehensiveness_sufficiency(ctx, explanation).per_bin
        assert len(calls) == 2  # the full inputs, then every "without top k" and "top k only" copy together
        calls.clear()
        widths.clear()
        monkeypatch.setattr(passes, "CPU_PADDING_ALLOWANCE", 0.0)
        monkeypatch.setattr(passes, "CPU_FREE_CELLS", 0)  # even the smallest pass counts its padding
        by_length = comprehensiveness_sufficiency(ctx, explanation).per_bin
        # no padding allowed: one pass per distinct length, each as wide as its examples, for both levels
        distinct = sorted(set(lengths.tolist()))
        assert len(calls) == 2 * len(distinct) and sorted(set(widths)) == distinct
        calls.clear()
        capped = comprehensiveness_sufficiency(ctx, explanation, batch_size=2).per_bin
        assert len(calls) > 2 * len(distinct)  # 2 copies per pass at most
    finally:
        handle.remove()
    pd.testing.assert_frame_equal(whole, by_length, check_exact=False, atol=1e-5, rtol=0)
    pd.testing.assert_frame_equal(whole, capped, check_exact=False, atol=1e-5, rtol=0)


def test_the_report_stacks_methods_and_shares_forward_passes():
    model, inputs = MODELS["our-encoder"]()
    explanations = explain(model, inputs, ["leave_one_out", "attention_rollout"])
    ctx = ExplainContext(model, inputs)
    report = faithfulness_report(ctx, explanations, n_random=4, steps=3)
    for frame in report:
        assert set(frame["method"]) == {"leave_one_out", "attention_rollout"}
        assert (frame["mode"] == "replace").all()
    single_method = deletion_insertion(ctx, explanations["attention_rollout"], n_random=4, steps=3).summary
    stacked = report.curve_summary[report.curve_summary.method == "attention_rollout"].reset_index(drop=True)
    pd.testing.assert_frame_equal(stacked, single_method, check_exact=False, atol=1e-5, rtol=0)
    # the random baseline does not depend on the method
    by_method = report.curve_summary.groupby("method")["random_aopc_mean"].apply(list)
    assert by_method["leave_one_out"] == pytest.approx(by_method["attention_rollout"])


# ----------------------------------------------------------------------------------------------------
# special tokens, curves, options
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["replace", "drop"])
def test_special_tokens_are_never_erased_by_default(tiny_bert, tokenizer, mode):
    inputs = tokenize(tokenizer, ["a gorgeous, witty movie", "dull"])
    ctx = ExplainContext(tiny_bert, inputs, tokenizer=tokenizer)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    # scores that put [CLS] and [SEP] first: they must still never be erased
    scores = torch.where(ctx.special & inputs.attention_mask.bool(), 100.0, torch.rand(inputs.input_ids.shape))
    explanation = hand(ctx, scores)
    seen = []
    handle = tiny_bert.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["input_ids"], kwargs["attention_mask"])), with_kwargs=True
    )
    try:
        report = faithfulness_report(ctx, [explanation], mode=mode, n_random=3)
        for ids, mask in seen:  # every copy keeps exactly one [CLS] and one [SEP] among its real tokens
            assert ((ids == cls) & mask.bool()).sum(dim=1).eq(1).all()
            assert ((ids == sep) & mask.bool()).sum(dim=1).eq(1).all()
        assert report.flips["n_erasable"].tolist() == [len(t) - 2 for t in inputs.tokens]
        seen.clear()
        comprehensiveness_sufficiency(ctx, explanation, mode=mode, include_special=True, bins=(0.01,))
        assert any(((ids == cls) & mask.bool()).sum(dim=1).eq(0).any() for ids, mask in seen)  # [CLS] goes first
    finally:
        handle.remove()
    if mode == "replace":  # [MASK] is what replaces a token
        assert ctx.replacement_id() == tokenizer.mask_token_id


def test_curves_steps_random_spread_and_seeds():
    model, inputs = MODELS["our-encoder"]()
    ctx = ExplainContext(model, inputs)
    explanation = leave_one_out(ctx)
    curves, summary = deletion_insertion(ctx, explanation, steps=3, n_random=5, seed=0)
    example0 = curves[(curves.example_id == 0) & (curves.order == "explanation") & (curves.curve == "deletion")]
    assert example0["n_erased"].tolist() == [0, 2, 5, 7]  # round(linspace(0, 7, 4))
    insertion = curves[(curves.example_id == 0) & (curves.order == "explanation") & (curves.curve == "insertion")]
    assert insertion["n_erased"].tolist() == [7, 5, 2, 0] and insertion["fraction"].iloc[-1] == 1.0
    # deletion at k = m and insertion at k = 0 are the same all-erased input
    assert example0["value"].iloc[-1] == pytest.approx(insertion["value"].iloc[0])
    random = curves[(curves.order == "random") & (curves.step > 0) & (curves.fraction < 1)]
    assert (random["value_std"] > 0).any() and curves[curves.order == "explanation"]["value_std"].isna().all()
    assert set(summary.columns) >= {"aopc", "auc", "random_aopc_mean", "random_aopc_std", "aopc_minus_random"}
    again = deletion_insertion(ctx, explanation, steps=3, n_random=5, seed=0).summary
    pd.testing.assert_frame_equal(summary, again)
    other = deletion_insertion(ctx, explanation, steps=3, n_random=5, seed=1).summary
    assert not np.allclose(summary["random_aopc_mean"], other["random_aopc_mean"])


def test_absolute_ranks_by_magnitude(key_classifier):
    inputs = key_batch()
    ctx = ExplainContext(key_classifier, inputs)
    scores = torch.where(inputs["input_ids"] == KEY, -10.0, torch.arange(6.0) / 10)  # KEY: large, negative
    explanation = hand(ctx, scores)
    assert decision_flips(ctx, explanation, absolute=True, n_random=0)["flip_k"].tolist() == [1, 1]
    assert decision_flips(ctx, explanation, absolute=False, n_random=0)["flip_k"].tolist() == [6, 4]


def test_encoder_decoder_models_erase_the_encoder_input():
    model, inputs = build("t5"), batch("t5")
    ctx = ExplainContext(model, inputs)
    explanation = hand(ctx, torch.rand(inputs["input_ids"].shape))
    for mode in ("replace", "drop"):
        per_bin, _ = comprehensiveness_sufficiency(ctx, explanation, mode=mode, bins=(0.5,))
        assert per_bin["n_erasable"].tolist() == [7, 4]  # the encoder's tokens, its first included
        assert np.isfinite(per_bin["comprehensiveness"]).all()


def test_bad_input_is_refused_with_a_message(key_classifier):
    inputs = key_batch()
    ctx = ExplainContext(key_classifier, inputs)
    explanation = hand(ctx, key_first(inputs))
    with pytest.raises(ValueError, match="bins must be"):
        comprehensiveness_sufficiency(ctx, explanation, bins=(0.0, 0.5))
    with pytest.raises(ValueError, match="bins must be"):
        comprehensiveness_sufficiency(ctx, explanation, bins=())
    with pytest.raises(ValueError, match="mode must be"):
        comprehensiveness_sufficiency(ctx, explanation, mode="mask")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        deletion_insertion(ctx, explanation, steps=0)
    with pytest.raises(ValueError, match="n_random must be"):
        decision_flips(ctx, explanation, n_random=-1)
    with pytest.raises(ValueError, match="batch_size must be"):
        decision_flips(ctx, explanation, batch_size=0)
    with pytest.raises(ValueError, match="no explanations"):
        faithfulness_report(ctx, {})
    other = ExplainContext(key_classifier, single(inputs, 1))
    with pytest.raises(ValueError, match="explain the same batch"):
        comprehensiveness_sufficiency(other, explanation)
    flipped_target = ExplainContext(key_classifier, inputs, target=Target.class_logit(0))
    with pytest.raises(ValueError, match="another target"):
        comprehensiveness_sufficiency(flipped_target, explanation)
    nan = hand(ctx, torch.full((2, 6), math.nan))
    with pytest.raises(ValueError, match="NaN"):
        comprehensiveness_sufficiency(ctx, nan)


def test_an_example_with_nothing_to_erase_gets_nan(tokenizer, tiny_bert):
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        inputs = tokenize(tokenizer, ["", "fine"])  # the first is [CLS] [SEP] only
    ctx = ExplainContext(tiny_bert, inputs, tokenizer=tokenizer)
    report = faithfulness_report(ctx, [hand(ctx, torch.rand(inputs.input_ids.shape))], n_random=2)
    assert report.eraser.loc[0, "n_erasable"] == 0 and math.isnan(report.eraser.loc[0, "comprehensiveness"])
    assert report.eraser.loc[1, "n_erasable"] == 1 and not math.isnan(report.eraser.loc[1, "comprehensiveness"])
    assert report.curve_summary[report.curve_summary.example_id == 0]["aopc"].isna().all()
    assert not report.flips.loc[0, "flipped"]


# ----------------------------------------------------------------------------------------------------
# a real model (slow)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_faithfulness_on_the_offline_sentiment_model():
    from attn_probe.models import load_model

    loaded = load_model("minilm-sentiment", device="cpu", progress=False)
    inputs = tokenize(loaded.tokenizer, ["a gorgeous, witty movie", "the plot drags on and on"])
    ctx = ExplainContext(loaded.model, inputs, tokenizer=loaded.tokenizer)
    loo = leave_one_out(ctx)
    report = faithfulness_report(ctx, [loo], n_random=5, steps=4)
    assert (report.flips["n_erasable"] == [len(t) - 2 for t in inputs.tokens]).all()
    assert report.eraser["comprehensiveness"].notna().all() and report.curve_summary["aopc"].notna().all()
    # leave-one-out's top token removed alone is, by its definition, the largest single-token drop
    top1 = comprehensiveness_sufficiency(ctx, loo, bins=(0.01,)).per_bin
    assert np.allclose(top1["comprehensiveness"], loo.scores.max(dim=1).values.numpy(), atol=1e-4)
