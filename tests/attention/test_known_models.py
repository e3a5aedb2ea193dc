"""Known models: every property they claim, checked by direct forward passes (no analysis code in between)."""

import pytest
import torch

from attn_probe.attention.hooks import hook_points
from attn_probe.attention.interventions import permute_weights, scale_weights, set_weights, uniform_weights
from attn_probe.attention.known_models import CLS, KEY, NO, PAD, SEP, YES, attention_ignored, attention_used
from attn_probe.capture import capture, intervene
from attn_probe.methods import explain

BUILDERS = {"attention_used": attention_used, "attention_ignored": attention_ignored}
LENGTHS = (8, 5, 11, 6, 3)
LABELS = (1, 0, 1, 1, 0)


def known(name):
    model, truth = BUILDERS[name]()
    return model, truth, truth.examples(LENGTHS, labels=LABELS)


def all_layers(model, edit_factory):
    return {layer: edit_factory() for layer in range(len(model.encoder.layers))}


@pytest.mark.parametrize("name", BUILDERS)
def test_the_model_predicts_what_the_rule_says_with_confidence(name):
    model, truth, inputs = known(name)
    probs = model(**inputs).logits.softmax(-1)
    assert torch.equal(probs.argmax(-1), truth.labels(inputs))
    assert torch.equal(truth.labels(inputs), torch.tensor(LABELS))
    assert bool((probs.max(-1).values > 0.99).all())
    assert not model.training


@pytest.mark.parametrize("name", BUILDERS)
def test_examples_are_well_formed_and_deterministic(name):
    _, truth, inputs = known(name)
    again = truth.examples(LENGTHS, labels=LABELS)
    assert all(torch.equal(inputs[key], again[key]) for key in inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert mask.sum(1).tolist() == list(LENGTHS)
    assert bool((ids[mask == 0] == PAD).all())
    assert [int(ids[i, n - 1]) for i, n in enumerate(LENGTHS)] == [SEP] * len(LENGTHS)
    first = ids[:, 0].tolist()
    if name == "attention_used":
        assert first == [CLS] * len(LENGTHS)
        assert (ids == KEY).sum(1).tolist() == list(LABELS)
    else:
        assert first == [YES if label else NO for label in LABELS]
        assert (ids == KEY).sum(1).tolist() == [1] * len(LENGTHS)
    assert truth.vocab[KEY] == "key" and truth.token_id("key") == KEY


@pytest.mark.parametrize("name", BUILDERS)
def test_every_attention_row_points_at_the_keyword(name):
    model, truth, inputs = known(name)
    attentions = model(**inputs, output_attentions=True).attentions
    real = inputs["attention_mask"].bool()
    attended = truth.attended(inputs)  # [batch, n]
    for weights in attentions:  # [batch, heads, q, k]
        for example in range(weights.shape[0]):
            rows = weights[example][:, real[example]]  # [heads, real q, k]
            if attended[example].any():
                on_keyword = rows[..., attended[example]].sum(-1)
                assert bool((on_keyword > 1 - 1e-6).all())
            else:  # no keyword: spread evenly over the real keys
                spread = rows[..., real[example]]
                torch.testing.assert_close(spread, torch.full_like(spread, 1.0 / int(real[example].sum())))
            assert bool((rows[..., ~real[example]] == 0).all())
            assert bool((rows[..., real[example]] > 0).all())  # no real key underflows to a "masked" zero


def test_ignored_model_output_is_exactly_independent_of_attention():
    model, _, inputs = known("attention_ignored")
    before = model(**inputs).logits
    edits = [
        lambda: permute_weights(seed=3),
        uniform_weights,
        lambda: scale_weights(0.0),
        lambda: set_weights(torch.eye(inputs["input_ids"].shape[1])),
    ]
    for make in edits:
        with torch.no_grad(), intervene(model, all_layers(model, make)):
            after = model(**inputs).logits
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_ignored_model_output_depends_only_on_the_first_token():
    model, truth, inputs = known("attention_ignored")
    before = model(**inputs).logits
    real = inputs["attention_mask"].bool()
    changed = inputs["input_ids"].clone()
    changed[:, 1:] = torch.where(real[:, 1:], torch.full_like(changed[:, 1:], PAD), changed[:, 1:])  # erase all else
    torch.testing.assert_close(model(changed, inputs["attention_mask"]).logits, before, rtol=0, atol=1e-6)
    flipped = inputs["input_ids"].clone()
    flipped[:, 0] = torch.where(flipped[:, 0] == YES, NO, YES)
    assert torch.equal(model(flipped, inputs["attention_mask"]).logits.argmax(-1), 1 - truth.labels(inputs))
    assert truth.relevant(inputs)[:, 0].all() and truth.relevant(inputs)[:, 1:].sum() == 0


def test_used_model_decision_flows_through_the_keyword():
    model, truth, inputs = known("attention_used")
    before = model(**inputs).logits
    keyword = truth.relevant(inputs)
    assert torch.equal(keyword, inputs["input_ids"] == KEY)
    erased = torch.where(keyword, torch.full_like(inputs["input_ids"], PAD), inputs["input_ids"])
    after = model(erased, inputs["attention_mask"]).logits
    assert torch.equal(after.argmax(-1), torch.zeros(len(LENGTHS), dtype=torch.long))  # class 1 examples flip
    # Any other token may change: nothing moves.
    others = (inputs["attention_mask"].bool() & ~keyword).clone()
    others[:, 0] = False  # [CLS] stays (it is the pooled row)
    swapped = torch.where(others, torch.full_like(inputs["input_ids"], truth.filler_ids[0]), inputs["input_ids"])
    torch.testing.assert_close(model(swapped, inputs["attention_mask"]).logits, before, rtol=0, atol=1e-5)


def test_used_model_changes_with_head_zero_of_layer_zero_only():
    model, truth, inputs = known("attention_used")
    before = model(**inputs).logits
    positive = truth.labels(inputs).bool()
    keyword = truth.relevant(inputs)
    assert truth.used_heads == ((0, 0),)
    flips = 0
    edits = [uniform_weights] + [lambda seed=seed, **kw: permute_weights(seed=seed, **kw) for seed in range(4)]
    for make in edits:
        edited = capture(model, inputs, edits={0: make(head=0)})
        # The class is exactly "does [CLS] give the keyword more than half its weight": whatever the edit did.
        on_keyword = (edited.weights[:, 0, 0, 0] * keyword).sum(-1)  # [batch]: layer 0, head 0, the [CLS] row
        assert torch.equal(edited.logits.argmax(-1), (on_keyword > 0.5).long())
        flips += int((edited.logits.argmax(-1)[positive] == 0).sum())
        for layer, head in ((0, 1), (1, 0), (1, 1)):
            with torch.no_grad(), intervene(model, {layer: make(head=head)}):
                unchanged = model(**inputs).logits
            torch.testing.assert_close(unchanged, before, rtol=0, atol=1e-6)
    assert flips >= 10  # of 15: uniform always flips; a permutation only keeps the class if it fixes the keyword


@pytest.mark.parametrize("name", BUILDERS)
def test_padded_batch_equals_single_examples_and_capture_matches(name):
    model, _, inputs = known(name)
    together = model(**inputs).logits
    for i, length in enumerate(LENGTHS):
        alone = model(inputs["input_ids"][i : i + 1, :length]).logits
        torch.testing.assert_close(together[i : i + 1], alone, rtol=0, atol=1e-6)
    captured = capture(model, inputs)
    assert captured.drift <= 1e-6  # the fused path and the explicit one agree
    assert captured.weights.shape == (len(LENGTHS), 2, 2, max(LENGTHS), max(LENGTHS))


def test_explanations_tell_the_two_models_apart():
    """Raw attention says "key" for both; erasing tokens finds the truth: the keyword, or the first token."""
    for name in BUILDERS:
        model, truth, inputs = known(name)
        positive = truth.labels(inputs).bool() | (name == "attention_ignored")
        results = explain(model, inputs, ["raw_attention", "leave_one_out"])
        attention_top = results["raw_attention"].scores.argmax(-1)
        erasure_top = results["leave_one_out"].scores.argmax(-1)
        keyword_at = truth.attended(inputs).long().argmax(-1)
        relevant_at = truth.relevant(inputs).long().argmax(-1)
        assert torch.equal(attention_top[positive], keyword_at[positive])
        assert torch.equal(erasure_top[positive], relevant_at[positive])
        if name == "attention_ignored":  # no path from any other token to the output: exactly zero
            assert bool((results["leave_one_out"].scores[:, 1:] == 0).all())
    assert not any(point.has_hooks for point in hook_points(model).values())


def test_bad_arguments_are_refused_with_a_reason():
    _, truth = attention_used()
    with pytest.raises(ValueError, match="at least 3 tokens"):
        truth.examples((2, 5))
    with pytest.raises(ValueError, match="one label per example"):
        truth.examples((4, 5), labels=[1])
    with pytest.raises(ValueError, match="0 or 1"):
        truth.examples((4, 5), labels=[1, 2])
    with pytest.raises(ValueError, match="no token"):
        truth.token_id("movie")
    with pytest.raises(ValueError, match="embed_dim >= 8"):
        attention_ignored(embed_dim=6, num_heads=2)
    with pytest.raises(ValueError, match="not divisible"):
        attention_used(embed_dim=16, num_heads=3)
    with pytest.raises(ValueError, match="sharpness"):
        attention_used(sharpness=200.0)
    with pytest.raises(ValueError, match="filler"):
        attention_used(vocab_size=7)
