"""Dataset summaries: shares with counts and Wilson intervals, by finding, slice and head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.findings import example_slices, headlines, summarise, wilson_interval


def findings() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "example_id": [0, 1, 2, 3, 0, 1, 2, 3],
            "layer": pd.array([pd.NA] * 4 + [0, 0, 1, 1], dtype="Int64"),
            "head": pd.array([pd.NA] * 8, dtype="Int64"),
            "subject": pd.array(["att"] * 4 + [pd.NA] * 4, dtype="string"),
            "finding": ["attention_disagrees"] * 4 + ["output_ignores_attention"] * 4,
            "holds": pd.array([True, False, pd.NA, True, True, True, False, pd.NA], dtype="boolean"),
        }
    )


def test_wilson_interval_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_shares_leave_not_assessable_rows_out():
    summary = summarise(findings())
    row = summary[summary["finding"] == "attention_disagrees"].iloc[0]
    assert (row["n_examples"], row["n_assessable"], row["n_holds"], row["n_not_assessable"]) == (4, 3, 2, 1)
    assert row["share"] == pytest.approx(2 / 3)
    assert row["ci_low"] < 2 / 3 < row["ci_high"]


def test_by_layer_and_by_slices():
    by_layer = summarise(findings(), by=["layer"])
    ignores = by_layer[by_layer["finding"] == "output_ignores_attention"].set_index("layer")
    assert ignores.loc[0, "share"] == 1.0 and ignores.loc[1, "n_assessable"] == 1
    slices = example_slices(
        torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]), labels=["pos", "neg", "pos", "neg"]
    )
    assert list(slices["n_tokens"]) == [2, 3, 1, 3] and list(slices["length_bin"]) == ["<=8"] * 4
    by_label = summarise(findings(), by=["label"], slices=slices)
    disagree = by_label[by_label["finding"] == "attention_disagrees"].set_index("label")
    assert disagree.loc["pos", "n_holds"] == 1 and disagree.loc["pos", "n_not_assessable"] == 1
    assert disagree.loc["neg", "share"] == 0.5


def test_length_bins_and_bad_input():
    slices = example_slices(np.ones((3, 40)) * (np.arange(40) < np.array([[5], [20], [40]])), length_bins=(8, 32))
    assert list(slices["length_bin"]) == ["<=8", "9-32", ">32"]
    with pytest.raises(ValueError, match="group by"):
        summarise(findings(), by=["nope"])
    with pytest.raises(ValueError, match="one row per example"):
        summarise(findings(), slices=pd.DataFrame({"example_id": [0, 0]}))
    with pytest.raises(ValueError, match="values for"):
        example_slices(torch.ones(2, 3), labels=[1])


def test_headlines_say_how_often_a_finding_holds_and_how_often_not():
    sentences = headlines(summarise(findings()))
    assert len(sentences) == 2
    assert any(s.startswith("the output barely moves") and "2 of 3 (example, layer) cases" in s for s in sentences)
    assert any(
        s.startswith("att ranks tokens unlike the gradient / erasure attributions: 2 of 3 examples (67%, 95% CI")
        and s.endswith("1 not assessable")
        for s in sentences
    )
