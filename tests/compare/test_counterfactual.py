"""Counterfactual attention (Jain & Wallace 2019) against models whose truth is known, and on tiny HF models."""

import math

import pandas as pd
import pytest
import torch

from attn_probe.attention.hooks import hook_points
from attn_probe.attention.interventions import permute_weights
from attn_probe.attention.known_models import attention_ignored, attention_used
from attn_probe.capture import capture
from attn_probe.capture.backend import model_configs
from attn_probe.compare.counterfactual import (
    ADVERSARIAL_COLUMNS,
    COUNTERFACTUAL_COLUMNS,
    MAX_JSD,
    adversarial_attention,
    attention_counterfactuals,
    counterfactual_outputs,
)
from tests.capture.families import batch, build
from tests.methods.models import single
from tests.threads import one_torch_thread

LENGTHS = (8, 5, 11, 6)
LABELS = (1, 0, 1, 1)
NUMERIC = [
    "output_tvd",
    "output_jsd",
    "max_logit_change",
    "target_change",
    "attention_jsd",
    "attention_jsd_target_row",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """The adversarial loops run hundreds of tiny passes; on a shared, oversubscribed CPU, OpenMP threads that
    wait for each other made them 20x slower (seen: 1.5 s -> 30 s). One thread is as fast here and stable."""
    with one_torch_thread():
        yield


def known(builder):
    model, truth = builder()
    return model, truth, truth.examples(LENGTHS, labels=LABELS)


def jsd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Reference Jensen-Shannon divergence over the last dimension, in nats."""
    m = (p + q) / 2
    return (torch.xlogy(p, p / m).nansum(-1) + torch.xlogy(q, q / m).nansum(-1)) / 2


# ------------------------------------------------------------------------------------------------ known models
def test_ignored_attention_changes_nothing_whatever_the_counterfactual():
    model, _, inputs = known(attention_ignored)
    table = attention_counterfactuals(model, inputs, heads="each")
    assert list(table.columns) == list(COUNTERFACTUAL_COLUMNS)
    # 4 examples x 2 layers x 2 heads x (3 seeds + uniform + frozen)
    assert len(table) == 4 * 2 * 2 * 5
    assert table["output_tvd"].max() <= 1e-6
    assert table["max_logit_change"].max() <= 1e-6
    assert not table["prediction_flips"].any()
    # ... although the attention was very different: away from the keyword it had all its weight on.
    assert table.query("intervention == 'uniform'")["attention_jsd"].min() > 0.3
    assert table.query("intervention == 'permute'")["attention_jsd_target_row"].median() > 0.5


def test_used_attention_moves_the_output_through_the_one_head_that_carries_it():
    model, truth, inputs = known(attention_used)
    table = attention_counterfactuals(model, inputs, heads="each")
    positive = set(torch.nonzero(truth.labels(inputs)).flatten().tolist())
    decisive = table.query("layer == 0 and head == 0")
    decisive_positive = decisive[decisive["example_id"].isin(positive)]
    for intervention in ("uniform", "frozen"):  # no position information: frozen is uniform here
        rows = decisive_positive[decisive_positive["intervention"] == intervention]
        assert rows["output_tvd"].min() > 0.9 and rows["prediction_flips"].all()
    permuted = decisive_positive.query("intervention == 'permute'")
    assert permuted["output_tvd"].mean() > 0.6 and permuted["prediction_flips"].mean() > 0.6
    # Every other head attends to the keyword too, but writes nothing: nothing moves.
    others = table.query("not (layer == 0 and head == 0)")
    assert others["output_tvd"].max() <= 1e-6
    # Without a keyword the attention is uniform already: uniform changes nothing there.
    negative = decisive[~decisive["example_id"].isin(positive)].query("intervention == 'uniform'")
    assert negative["output_tvd"].max() <= 1e-6 and negative["attention_jsd"].max() <= 1e-6


def test_the_adversary_finds_a_disjoint_attention_for_the_ignored_model_and_none_for_the_used_one():
    ignored, _, inputs = known(attention_ignored)
    found = adversarial_attention(ignored, inputs, layer=0, epsilon=0.01, steps=100)
    assert list(found.columns) == list(ADVERSARIAL_COLUMNS)
    assert found["feasible"].all() and (found["output_tvd"] <= 0.01).all()
    assert found["attention_jsd"].min() > 0.9 * MAX_JSD
    assert found["max_jsd"].eq(math.log(2)).all() and found["head"].isna().all()

    used, truth, inputs = known(attention_used)
    positive = truth.labels(inputs).bool().numpy()
    for rows in ("target", "all"):
        found = adversarial_attention(used, inputs, layer=0, head=0, rows=rows, epsilon=0.01, steps=100)
        assert found["feasible"].all() and (found["output_tvd"] <= 0.01).all()
        # [CLS]'s row, the one the output reads, cannot leave the keyword without moving the output.
        assert found["attention_jsd_target_row"][positive].max() < 0.1
        assert not found["prediction_flips"].any()
    # The rows the output never reads can be changed at will: the mean over all rows is large.
    assert found["attention_jsd"][positive].min() > 0.45


def test_the_adversary_is_deterministic_and_the_same_alone_as_in_a_padded_batch():
    model, _, inputs = known(attention_used)
    options = dict(layer=0, head=0, epsilon=0.02, steps=40, seed=3)
    together = adversarial_attention(model, inputs, **options)
    pd.testing.assert_frame_equal(together, adversarial_attention(model, inputs, **options))
    columns = ["attention_jsd", "attention_jsd_target_row", "output_tvd", "output_jsd"]
    for i in range(len(LENGTHS)):
        alone = adversarial_attention(model, single(inputs, i), **options)
        assert bool(alone["feasible"][0]) == bool(together["feasible"][i])
        for column in columns:
            assert alone[column][0] == pytest.approx(together[column][i], abs=1e-5), column


# ------------------------------------------------------------------------------------------------ HF and ours
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_hugging_face_models_padded_batch_equals_single_examples(family):
    model, inputs = build(family), batch(family)
    together = attention_counterfactuals(model, inputs, layers=[1], heads=[0, 3], seeds=(0, 1))
    assert len(together) == 2 * 1 * 2 * 4  # examples x layers x heads x (2 seeds + uniform + frozen)
    assert together["head"].dtype == "Int64" and together["seed"].dtype == "Int64"
    assert together.query("intervention != 'permute'")["seed"].isna().all()
    assert together["output_tvd"].between(0, 1).all() and together["output_jsd"].between(0, MAX_JSD).all()
    assert together["attention_jsd"].between(0, MAX_JSD).all() and together["attention_jsd"].max() > 0.01
    assert together["output_tvd"].max() > 1e-4  # random tiny models do use their attention a little
    for i in range(2):
        alone = attention_counterfactuals(model, single(inputs, i), layers=[1], heads=[0, 3], seeds=(0, 1))
        mine = together[together["example_id"] == i].reset_index(drop=True)
        labels = [column for column in COUNTERFACTUAL_COLUMNS if column not in NUMERIC and column != "example_id"]
        pd.testing.assert_frame_equal(mine[labels], alone[labels])
        pd.testing.assert_frame_equal(mine[NUMERIC], alone[NUMERIC], rtol=0, atol=1e-5)


def test_language_model_outputs_are_read_at_the_predicting_position():
    model, inputs = build("llama"), batch("llama")
    table = attention_counterfactuals(model, inputs, interventions=["uniform"], layers=[1])
    logits = model(**inputs).logits
    last = inputs["attention_mask"].sum(1) - 1
    assert table["prediction"].tolist() == logits[torch.arange(2), last].argmax(-1).tolist()


@pytest.mark.parametrize("intervention", ["permute", "uniform", "frozen"])
def test_counterfactual_outputs_are_the_distributions_behind_the_distances(intervention):
    model, inputs = build("bert"), batch("bert")
    distances = attention_counterfactuals(
        model, inputs, interventions=[intervention], layers=[1], heads=[2], seeds=(3,)
    )
    classes = model.config.num_labels
    full = counterfactual_outputs(model, inputs, layer=1, head=2, intervention=intervention, seed=3, top=classes)
    assert len(full.table) == 2 * classes  # every class of both examples
    moved = full.table.assign(change=(full.table["prob_after"] - full.table["prob_before"]).abs())
    tvd = moved.groupby("example_id")["change"].sum() / 2
    assert tvd.to_numpy() == pytest.approx(distances["output_tvd"].to_numpy(), abs=1e-6)
    assert full.table.groupby("example_id")["prob_before"].sum().to_numpy() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert full.old.shape == full.new.shape and full.old.shape[:2] == (2, 1)  # [batch, one head, q, k]
    assert full.new[:, 0].sum(-1)[inputs["attention_mask"].bool()].allclose(torch.ones(1), atol=1e-5)
    top = counterfactual_outputs(model, inputs, layer=1, head=2, intervention=intervention, seed=3, top=1)
    flipped = distances["prediction_flips"].to_numpy()
    assert top.table.groupby("example_id").size().tolist() == [1 + int(f) for f in flipped]  # + the new prediction


def test_frozen_is_the_pattern_of_the_content_free_input():
    model, inputs = build("bert"), batch("bert")
    table = attention_counterfactuals(model, inputs, interventions=["frozen"], layers=[0])
    real = inputs["attention_mask"].bool()
    content_free = {**inputs, "input_ids": torch.where(real, 0, inputs["input_ids"])}  # no tokenizer: id 0
    original = capture(model, inputs).weights[:, 0].double()  # [batch, heads, q, k]
    frozen = capture(model, content_free).weights[:, 0].double()
    expected = jsd(frozen, original).mean(1)  # [batch, q]
    expected = (expected * real).sum(1) / real.sum(1)
    torch.testing.assert_close(torch.tensor(table["attention_jsd"].tolist(), dtype=torch.float64), expected)


def test_permutation_moves_weight_only_among_each_rows_real_keys():
    torch.manual_seed(0)
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]).bool()
    allowed = real[:, None, None, :] & torch.ones(6, 6).tril().bool()  # padding and causality
    weights = torch.rand(2, 3, 6, 6).masked_fill(~allowed, 0.0)
    weights = weights / weights.sum(-1, keepdim=True)
    permuted = permute_weights(seed=5, head=[0, 2])(weights, None)
    assert torch.equal(permuted[:, 1], weights[:, 1])  # head 1 not chosen
    assert torch.equal(permuted > 0, weights > 0)  # support kept: nothing on padding or the future
    torch.testing.assert_close(permuted.sort(-1).values, weights.sort(-1).values, rtol=0, atol=0)
    assert not torch.equal(permuted[:, 0], weights[:, 0])
    alone = permute_weights(seed=5, head=[0, 2])(weights[1:, :, :3, :3], None)
    assert torch.equal(alone[0], permuted[1, :, :3, :3])  # an example's permutation ignores the batch


def test_adversarial_search_runs_on_hugging_face_models():
    for family in ("bert", "llama"):
        model, inputs = build(family), batch(family)
        found = adversarial_attention(model, inputs, layer=1, head=2, epsilon=0.05, steps=40)
        assert found["feasible"].all() and (found["output_tvd"] <= 0.05).all()
        assert found["attention_jsd"].between(0, MAX_JSD).all() and found["attention_jsd"].min() > 0.05
        assert found["head"].tolist() == [2, 2] and (found["best_step"] >= 0).all()


# ------------------------------------------------------------------------------------------------ protocol
def test_one_forward_pass_per_configuration_for_the_whole_batch():
    model, _, inputs = known(attention_used)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        attention_counterfactuals(model, inputs, heads="each", seeds=(0, 1, 2))
    finally:
        handle.remove()
    # 2 (capture + its drift check) + 1 (content-free capture) + 2 layers x 2 heads x (3 seeds + uniform + frozen)
    assert len(calls) == 2 + 1 + 2 * 2 * 5


def test_the_model_is_left_as_it_was_found():
    model, _, inputs = known(attention_used)
    before = model(**inputs).logits
    model.train()
    model.encoder.layers[1].eval()  # a mixed state must come back as it was, module by module
    modes = [module.training for module in model.modules()]
    attention_counterfactuals(model, inputs, layers=[0])
    adversarial_attention(model, inputs, layer=0, steps=3)
    assert [module.training for module in model.modules()] == modes
    assert not any(point.has_hooks for point in hook_points(model).values())
    assert all(parameter.grad is None for parameter in model.parameters())
    model.eval()
    torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=0)

    hf, hf_inputs = build("bert"), batch("bert")
    implementations = [config._attn_implementation for config in model_configs(hf)]
    with torch.no_grad():
        hf_before = hf(**hf_inputs).logits
    attention_counterfactuals(hf, hf_inputs, layers=[0], interventions=["uniform"])
    adversarial_attention(hf, hf_inputs, layer=0, steps=3)
    assert [config._attn_implementation for config in model_configs(hf)] == implementations
    assert all(parameter.grad is None for parameter in hf.parameters()) and not hf.training
    with torch.no_grad():
        torch.testing.assert_close(hf(**hf_inputs).logits, hf_before, rtol=0, atol=0)


def test_bad_arguments_are_refused_with_a_reason():
    model, _, inputs = known(attention_used)
    with pytest.raises(ValueError, match="unknown or no interventions"):
        attention_counterfactuals(model, inputs, interventions=["shuffle"])
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        attention_counterfactuals(model, inputs, layers=[5])
    with pytest.raises(ValueError, match="head 9 does not exist"):
        attention_counterfactuals(model, inputs, heads=[9])
    with pytest.raises(ValueError, match="'all', 'each'"):
        attention_counterfactuals(model, inputs, heads="some")
    with pytest.raises(ValueError, match="seeds is empty"):
        attention_counterfactuals(model, inputs, seeds=())
    with pytest.raises(ValueError, match="epsilon must be a positive"):
        adversarial_attention(model, inputs, layer=0, epsilon=0)
    with pytest.raises(ValueError, match="measure must be"):
        adversarial_attention(model, inputs, layer=0, measure="kl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be"):
        adversarial_attention(model, inputs, layer=0, steps=0)
    with pytest.raises(ValueError, match="layer -1 does not exist"):
        adversarial_attention(model, inputs, layer=-1)
