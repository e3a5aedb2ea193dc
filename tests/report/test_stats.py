"""Bootstrap intervals over examples: deterministic under the seed, around the point estimate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attn_probe.findings import summarise
from attn_probe.report import bootstrap_shares


def synthetic_findings(examples: int = 40, heads: int = 6, seed: int = 1) -> pd.DataFrame:
    """One per-example finding and one per-head finding whose heads share their example's tendency."""
    generator = np.random.default_rng(seed)
    rows = []
    for example in range(examples):
        holds = generator.random() < 0.4
        rows.append({"example_id": example, "layer": pd.NA, "head": pd.NA, "subject": "raw_attention",
                     "finding": "attention_disagrees", "holds": pd.NA if example % 10 == 0 else holds})  # fmt: skip
        tendency = generator.random()
        for head in range(heads):
            rows.append({"example_id": example, "layer": 0, "head": head, "subject": pd.NA,
                         "finding": "attention_sink", "holds": generator.random() < tendency})  # fmt: skip
    frame = pd.DataFrame(rows)
    return frame.astype({"layer": "Int64", "head": "Int64", "subject": "string", "holds": "boolean"})


def test_bootstrap_is_deterministic_and_contains_the_point():
    findings = synthetic_findings()
    first = bootstrap_shares(findings, resamples=1000, seed=0)
    pd.testing.assert_frame_equal(first, bootstrap_shares(findings, resamples=1000, seed=0))
    other = bootstrap_shares(findings, resamples=1000, seed=1)
    assert not np.allclose(first[["boot_low", "boot_high"]], other[["boot_low", "boot_high"]])
    assert ((first["boot_low"] <= first["share"]) & (first["share"] <= first["boot_high"])).all()
    summary = summarise(findings)
    merged = summary.merge(first, on=["finding", "subject", "level"], suffixes=("", "_boot"))
    assert np.allclose(merged["share"], merged["share_boot"])
    assert (merged["n_assessable"] == merged["n_assessable_boot"]).all()
    per_example = merged[merged["level"] == "example"].iloc[0]
    # one row per example: close to the Wilson interval
    assert abs(per_example["boot_low"] - per_example["ci_low"]) < 0.1
    assert abs(per_example["boot_high"] - per_example["ci_high"]) < 0.1
    per_head = merged[merged["level"] == "head"].iloc[0]
    # heads of one example move together: resampling examples gives the wider (honest) interval
    assert per_head["boot_high"] - per_head["boot_low"] > per_head["ci_high"] - per_head["ci_low"]


def test_bootstrap_on_a_run(full_run):
    findings = full_run.table("findings")
    table = bootstrap_shares(findings, resamples=200, seed=3)
    judged = table.dropna(subset=["share"])
    assert not judged.empty
    assert ((judged["boot_low"] <= judged["share"] + 1e-12) & (judged["share"] <= judged["boot_high"] + 1e-12)).all()
    assert (table["resamples"] <= 200).all()


def test_bootstrap_edge_cases():
    empty = synthetic_findings().iloc[:0]
    assert bootstrap_shares(empty).empty
    never = synthetic_findings(examples=5).assign(holds=pd.array([pd.NA] * 35, dtype="boolean"))
    table = bootstrap_shares(never, resamples=20)
    assert table["share"].isna().all() and table["boot_low"].isna().all() and (table["resamples"] == 0).all()
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_shares(synthetic_findings(), resamples=0)
    with pytest.raises(ValueError, match="lacks"):
        bootstrap_shares(pd.DataFrame({"example_id": [0]}))
