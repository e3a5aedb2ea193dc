"""Findings on models whose truth is known: misleading-attention findings fire where attention is unused,
and stay silent where the output flows through the attended token."""

from __future__ import annotations

import pandas as pd
import pytest

from attn_probe.attention.known_models import attention_ignored, attention_used
from attn_probe.findings import FINDINGS, Thresholds, assess

LENGTHS = (8, 6, 10, 7)  # classes alternate 1, 0, 1, 0


def verdicts(assessment, finding: str) -> pd.DataFrame:
    return assessment.findings[assessment.findings["finding"] == finding]


@pytest.fixture(scope="module")
def ignored():
    model, truth = attention_ignored()
    return assess(model, truth.examples(LENGTHS), attention_methods=["raw_attention"])


@pytest.fixture(scope="module")
def used():
    model, truth = attention_used()
    return assess(model, truth.examples(LENGTHS), attention_methods=["raw_attention"])


def test_every_finding_is_produced(ignored):
    assert set(ignored.findings["finding"]) == set(FINDINGS)
    assert set(ignored.evidence) == {
        "agreement", "head_agreement", "eraser", "flips", "sinks", "position", "counterfactuals", "adversarial",
        "randomisation",
    }  # fmt: skip
    assert ignored.findings["statement"].str.len().min() > 10


def test_unused_attention_is_flagged(ignored):
    # Attention points at "key", the class is the first token's: every layer's attention can be changed freely.
    ignores = verdicts(ignored, "output_ignores_attention")
    assert len(ignores) == 4 * 2 and ignores["holds"].all()
    assert (ignores["value"] == 0).all()  # exactly: the heads' outputs are multiplied by zero
    assert verdicts(ignored, "adversarial_attention_exists")["holds"].all()
    disagrees = verdicts(ignored, "attention_disagrees")  # attention: "key"; gradients, erasure: token 0
    assert len(disagrees) == 4 * (1 + 2 * 2) and disagrees["holds"].all()  # per example, and per layer x head
    assert verdicts(ignored, "erasure_prefers_attributions")["holds"].all()


def test_used_attention_is_not_flagged_where_it_is_used(used):
    ignores = verdicts(used, "output_ignores_attention").set_index(["example_id", "layer"])["holds"]
    # Only layer 0 (its head 0) writes the decision; layer 1's heads write nothing, so its attention is unused.
    for example in (0, 2):  # class 1: "key" present, the attention is sharp
        assert not ignores[(example, 0)] and ignores[(example, 1)]
    for example in (1, 3):  # class 0: the attention is already uniform, permuting it changes nothing: no verdict
        assert ignores[(example, 0)] is pd.NA and ignores[(example, 1)] is pd.NA
    adversarial = verdicts(used, "adversarial_attention_exists")  # the last layer (1): its attention is unused
    assert adversarial["holds"].all()
    # Where "key" is present (class 1), attention, gradients and erasure all point at it.
    disagrees = verdicts(used, "attention_disagrees")
    per_example = disagrees[disagrees["layer"].isna()].set_index("example_id")["holds"]
    assert not per_example[0] and not per_example[2]
    # Per head: every head attends to "key", so every head agrees with the attributions there too.
    per_head = disagrees[disagrees["layer"].notna() & disagrees["example_id"].isin([0, 2])]
    assert len(per_head) == 2 * 2 * 2 and not per_head["holds"].any()
    erasure = verdicts(used, "erasure_prefers_attributions").set_index("example_id")["holds"]
    assert not erasure[0] and not erasure[2]


def test_adversarial_on_the_decisive_layer_finds_no_different_attention():
    model, truth = attention_used()
    assessment = assess(
        model, truth.examples((8, 10), labels=(1, 1)), attention_methods=["raw_attention"],
        checks=["adversarial"], adversarial_layers=[0], adversarial_options={"head": 0},
    )  # fmt: skip
    assert not verdicts(assessment, "adversarial_attention_exists")["holds"].any()
    # Head 1 of the same layer writes nothing: its [CLS] row can be anything.
    assessment = assess(
        model, truth.examples((8, 10), labels=(1, 1)), attention_methods=["raw_attention"],
        checks=["adversarial"], adversarial_layers=[0], adversarial_options={"head": 1},
    )  # fmt: skip
    assert verdicts(assessment, "adversarial_attention_exists")["holds"].all()


def test_summary_and_thresholds(ignored):
    summary = ignored.summary(by=["layer"])
    ignores = summary[summary["finding"] == "output_ignores_attention"]
    assert list(ignores["share"]) == [1.0, 1.0] and list(ignores["n_assessable"]) == [4, 4]
    strict = assess(*_ignored_with_batch(), checks=["counterfactuals"], thresholds=Thresholds(ignored_tvd=0.0))
    assert verdicts(strict, "output_ignores_attention")["holds"].all()  # TVD is exactly 0, <= 0 holds


def _ignored_with_batch():
    model, truth = attention_ignored()
    return model, truth.examples((5, 6))


def test_bad_choices_are_refused():
    model, truth = attention_ignored()
    inputs = truth.examples((5,))
    with pytest.raises(ValueError, match="unknown checks"):
        assess(model, inputs, checks=["vibes"])
    with pytest.raises(KeyError, match="no method named"):
        assess(model, inputs, attention_methods=["raw_atention"])
    with pytest.raises(ValueError, match="reference methods"):
        assess(model, inputs, reference_methods=[], checks=["agreement"])
