"""Each verdict on hand-made comparison tables: when it holds, when it does not, when it cannot be judged."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from attn_probe.findings import (
    FINDING_COLUMNS,
    Thresholds,
    adversarial_attention_exists,
    attention_disagrees,
    attention_no_better_than_random,
    attention_sink,
    erasure_prefers_attributions,
    head_disagrees,
    output_ignores_attention,
    position_explains_head,
    survives_randomisation,
)


def holds(frame: pd.DataFrame) -> list:
    return [None if value is pd.NA else bool(value) for value in frame["holds"]]


def agreement(rows: list[tuple[int, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["example_id", "method_a", "method_b", "kendall_tau"])


def test_every_verdict_has_the_same_columns_and_types():
    frame = attention_disagrees(agreement([(0, "att", "ig", 0.1)]), ["att"], ["ig"])
    assert list(frame.columns) == FINDING_COLUMNS
    assert str(frame["holds"].dtype) == "boolean" and str(frame["layer"].dtype) == "Int64"
    assert frame["layer"].isna().all() and frame.loc[0, "subject"] == "att"


def test_attention_disagrees_against_a_consensus():
    table = agreement(
        [
            (0, "att", "ig", 0.04), (0, "att", "loo", 0.10), (0, "ig", "loo", 0.61),  # disagrees with a consensus
            (1, "att", "ig", 0.70), (1, "loo", "att", 0.50), (1, "ig", "loo", 0.80),  # agrees (either pair order)
            (2, "att", "ig", 0.00), (2, "att", "loo", 0.00), (2, "ig", "loo", 0.10),  # no consensus to test
        ]
    )  # fmt: skip
    frame = attention_disagrees(table, ["att"], ["ig", "loo"])
    assert holds(frame) == [True, False, None]
    np.testing.assert_allclose(frame["value"], [0.07, 0.60, 0.0])
    np.testing.assert_allclose(frame["baseline"], [0.61, 0.80, 0.10])
    assert "tau = 0.07 vs 0.61" in frame.loc[0, "statement"]
    assert "agrees" in frame.loc[1, "statement"] and "no consensus" in frame.loc[2, "statement"]
    looser = attention_disagrees(table, ["att"], ["ig", "loo"], Thresholds(consensus_tau=0.05))
    assert holds(looser)[2] is True


def test_attention_sink_needs_a_high_share_and_a_small_norm_share():
    sinks = pd.DataFrame(
        {
            "example_id": [0, 0, 0, 0],
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "special_share": [0.8, 0.8, 0.3, np.nan],
            "special_share_norm": [0.1, 0.7, 0.05, 0.2],
        }
    )
    frame = attention_sink(sinks)
    assert holds(frame) == [True, False, False, None]
    decoder = sinks.assign(special_share=0.0, special_share_norm=0.0, first_share=[0.9, 0.2, 0.9, 0.9],
                           first_share_norm=[0.1, 0.0, 0.8, np.nan])  # fmt: skip
    first = attention_sink(decoder)  # no special tokens, but the first token draws the weight
    assert holds(first) == [True, False, False, False]
    assert "the first token" in first.loc[0, "statement"]
    assert "80%" in frame.loc[0, "statement"] and "10%" in frame.loc[0, "statement"]
    assert "not a sink" in frame.loc[2, "statement"]
    assert list(frame["layer"]) == [0, 0, 1, 1] and list(frame["head"]) == [0, 1, 0, 1]


def counterfactuals(rows: list[tuple]) -> pd.DataFrame:
    columns = ["example_id", "layer", "head", "intervention", "seed", "output_tvd", "attention_jsd"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["head"] = frame["head"].astype("Int64")
    return frame


def test_output_ignores_attention_takes_the_largest_change_and_needs_a_changed_attention():
    table = counterfactuals(
        [
            (0, 0, None, "permute", 0, 0.001, 0.3), (0, 0, None, "permute", 1, 0.004, 0.3),
            (0, 0, None, "uniform", None, 0.002, 0.2), (0, 0, None, "frozen", None, 0.2, 0.1),
            (0, 1, None, "permute", 0, 0.001, 0.3), (0, 1, None, "permute", 1, 0.05, 0.3),
            (0, 1, None, "uniform", None, 0.0, 0.2),
            (1, 0, None, "permute", 0, 0.0, 0.0), (1, 0, None, "uniform", None, 0.0, 0.001),  # nothing changed
        ]
    )  # fmt: skip
    frame = output_ignores_attention(table)
    assert holds(frame) == [True, False, None]
    np.testing.assert_allclose(frame["value"].iloc[:2], [0.004, 0.05])
    assert "position-only (frozen) attention: TVD 0.200" in frame.loc[0, "evidence"]
    assert "layer 0" in frame.loc[0, "statement"] and "does not use" in frame.loc[0, "statement"]
    assert frame["head"].isna().all()


def test_adversarial_attention_exists():
    table = pd.DataFrame(
        {
            "example_id": [0, 1, 2],
            "layer": [1, 1, 1],
            "head": pd.array([pd.NA, pd.NA, 0], dtype="Int64"),
            "measure": ["tvd"] * 3,
            "epsilon": [0.01] * 3,
            "feasible": [True, True, False],
            "attention_jsd": [0.6, 0.05, np.nan],
            "max_jsd": [math.log(2)] * 3,
        }
    )
    frame = adversarial_attention_exists(table)
    assert holds(frame) == [True, False, False]
    assert "JSD 0.60" in frame.loc[0, "statement"] and "layer 1 head 0" in frame.loc[2, "statement"]


def test_erasure_prefers_attributions_uses_the_best_reference():
    eraser = pd.DataFrame(
        {
            "example_id": [0, 0, 0, 1, 1, 1, 2, 2],
            "method": ["att", "ig", "loo"] * 2 + ["att", "ig"],
            "comprehensiveness": [0.0] * 8,
            "comprehensiveness_probability": [0.05, 0.3, 0.6, 0.5, 0.4, 0.6, 0.01, 0.02],
        }
    )
    frame = erasure_prefers_attributions(eraser, ["att"], ["ig", "loo"])
    assert holds(frame) == [True, False, None]
    np.testing.assert_allclose(frame["baseline"], [0.6, 0.6, 0.02])
    assert "loo" in frame.loc[0, "statement"] and "probability" in frame.loc[0, "evidence"]


def test_attention_no_better_than_random():
    flips = pd.DataFrame(
        {
            "example_id": [0, 1, 2, 3, 4, 5],
            "method": ["att"] * 5 + ["ig"],
            "flipped": [True, True, False, False, True, True],
            "flip_k": pd.array([5, 1, pd.NA, pd.NA, 2, 1], dtype="Int64"),
            "random_flip_k_mean": [3.0, 3.0, 4.0, np.nan, np.nan, 3.0],
            "random_flips_fraction": [1.0, 1.0, 0.5, 0.0, 0.0, 1.0],
        }
    )
    frame = attention_no_better_than_random(flips, ["att"])
    assert len(frame) == 5  # the reference method's row is not judged
    assert holds(frame) == [True, False, True, None, False]


def test_position_explains_head_and_survives_randomisation():
    explained = pd.DataFrame(
        {"example_id": [0, 0], "layer": [0, 0], "head": [0, 1], "r2_position": [0.95, 0.2], "r2_uniform": [0.1, 0.1]}
    )
    assert holds(position_explains_head(explained)) == [True, False]
    sanity = pd.DataFrame(
        {
            "example_id": [0, 0, 0, 0],
            "method": ["att", "att", "ig", "ig"],
            "step": [0, 1, 0, 1],
            "randomised_from": ["head", "layer 0", "head", "layer 0"],
            "spearman_abs": [0.99, 0.9, 0.5, 0.1],
        }
    )
    frame = survives_randomisation(sanity)
    assert holds(frame) == [True, False]  # judged at each method's last (fully randomised) step
    np.testing.assert_allclose(frame["value"], [0.9, 0.1])


def test_bad_tables_and_thresholds_are_refused():
    with pytest.raises(ValueError, match="attention_sinks"):
        attention_sink(pd.DataFrame({"example_id": [0]}))
    with pytest.raises(ValueError, match="DataFrame"):
        output_ignores_attention([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share"):
        Thresholds(sink_share=2.0)
    with pytest.raises(ValueError, match="ln 2"):
        Thresholds(adversarial_jsd=0.9)
    with pytest.raises(ValueError, match="finite"):
        Thresholds(ignored_tvd=float("nan"))
    assert set(Thresholds().to_frame()["name"]) == set(Thresholds.__dataclass_fields__)


def test_head_disagrees_judges_each_head_against_the_consensus():
    heads = pd.DataFrame(
        {
            "example_id": [0, 0, 0, 0, 1, 1],
            "layer": [0, 0, 1, 1, 0, 0],
            "head": pd.array([0, 0, 0, 0, 0, 0], dtype="Int64"),
            "method_a": ["raw"] * 6,
            "method_b": ["ig", "loo"] * 3,
            "kendall_tau": [0.0, 0.1, 0.7, 0.5, 0.0, 0.0],
        }
    )
    consensus = agreement([(0, "ig", "loo", 0.8), (1, "ig", "loo", 0.1)])
    frame = head_disagrees(heads, consensus, ["ig", "loo"])
    assert holds(frame) == [True, False, None]  # (0, layer 0), (0, layer 1), example 1: no consensus
    assert list(frame["layer"]) == [0, 1, 0] and set(frame["finding"]) == {"attention_disagrees"}
    np.testing.assert_allclose(frame["value"], [0.05, 0.6, 0.0])
    assert "layer 0 head 0 of raw" in frame.loc[0, "statement"]
