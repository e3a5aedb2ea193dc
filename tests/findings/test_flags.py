"""Numerical honesty flags: IG convergence per example, capture drift per batch, and the findings resting on them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.findings import Thresholds
from attn_probe.findings.flags import (
    DRIFT_CHECK,
    DRIFT_ROUNDING_ULPS,
    FLAG_COLUMNS,
    IG_CHECK,
    IG_DELTA,
    drift_flags,
    drift_threshold,
    flag_dependence,
    flag_summary,
    numerical_flags,
    resting_on_flags,
)


def ig(relative, delta):
    """A stand-in explanation with integrated gradients' details."""
    return SimpleNamespace(
        details={"relative_convergence_delta": torch.tensor(relative), "convergence_delta": torch.tensor(delta)}
    )


def test_every_ig_result_carries_its_delta_and_is_flagged_above_the_threshold():
    explanations = {
        "integrated_gradients": ig([0.01, 0.2, 5.0, float("nan")], [0.001, -0.3, 1e-8, 0.1]),
        "raw_attention": SimpleNamespace(details={}),
    }
    flags = numerical_flags(explanations, None, Thresholds(ig_relative_convergence_delta=0.1))
    assert list(flags.columns) == FLAG_COLUMNS
    relative = flags[flags["check"] == IG_CHECK].set_index("example_id")
    assert list(relative["flagged"]) == [False, True, False, True]  # 5.0 with |delta| 1e-8: rounding; NaN: flagged
    assert (relative["threshold"] == 0.1).all() and (relative["method"] == "integrated_gradients").all()
    absolute = flags[flags["check"] == IG_DELTA].set_index("example_id")
    assert absolute.loc[1, "value"] == pytest.approx(-0.3) and not absolute["flagged"].any()
    assert set(flags["method"]) == {"integrated_gradients"}  # methods without a delta have no rows


def test_drift_is_flagged_per_batch_and_the_line_follows_half_precision():
    captured = SimpleNamespace(drift=2e-3, input_ids=torch.zeros(3, 5), logits=torch.zeros(3, 2))
    flags = numerical_flags({}, captured, Thresholds())
    assert list(flags["example_id"]) == [0, 1, 2] and flags["flagged"].all()
    assert (flags["check"] == DRIFT_CHECK).all() and (flags["scope"] == "batch").all() and flags["method"].isna().all()
    assert not drift_flags(2, 5e-4, Thresholds())["flagged"].any()
    per_example = numerical_flags({}, SimpleNamespace(**vars(captured), drift_per_example=torch.tensor([0, 2e-3, 0])))
    assert per_example["flagged"].tolist() == [False, True, False] and (per_example["scope"] == "example").all()
    assert drift_flags(2, None, Thresholds()).empty  # not measured: no rows, not a pass
    logits = torch.tensor([[8.0, -3.0]], dtype=torch.float16)
    line = DRIFT_ROUNDING_ULPS * torch.finfo(torch.float16).eps * 8.0
    assert drift_threshold(Thresholds(), logits) == pytest.approx(line)
    assert drift_threshold(Thresholds(), logits.float()) == 1e-3
    assert not drift_flags(1, 0.05, Thresholds(), logits)["flagged"].any()


def test_summary_for_the_manifest_is_json_ready():
    flags = pd.concat(
        [
            numerical_flags({"integrated_gradients": ig([0.01, 0.3], [0.001, 0.2])}, None),
            drift_flags(2, 4e-7, Thresholds()),
        ],
        ignore_index=True,
    )
    summary = flag_summary(flags, Thresholds())
    assert summary["capture_drift"] == {
        "max": pytest.approx(4e-7), "threshold": 1e-3, "flagged_examples": 0, "measured_examples": 2,
    }  # fmt: skip
    ig_summary = summary["ig_convergence"]["integrated_gradients"]
    assert ig_summary["flagged_examples"] == 1 and ig_summary["examples"] == 2
    assert ig_summary["max_relative_convergence_delta"] == pytest.approx(0.3)
    assert flag_summary(drift_flags(0, None))["capture_drift"]["max"] is None


def _findings():
    rows = [
        # example, layer, head, subject, finding, holds
        (0, None, None, "raw_attention", "attention_disagrees", True),
        (1, None, None, "raw_attention", "attention_disagrees", False),
        (2, None, None, "raw_attention", "attention_disagrees", True),
        (1, None, None, "raw_attention", "erasure_prefers_attributions", True),
        (1, None, None, "raw_attention", "attention_no_better_than_random", True),
        (1, 0, 1, None, "attention_sink", True),
        (1, None, None, "integrated_gradients", "survives_randomisation", False),
        (2, None, None, "leave_one_out", "survives_randomisation", True),
    ]
    frame = pd.DataFrame(rows, columns=["example_id", "layer", "head", "subject", "finding", "holds"])
    return frame.assign(holds=frame["holds"].astype("boolean"))


def test_findings_rest_on_a_flagged_reference_or_a_drifted_capture():
    flags = pd.concat(
        [
            numerical_flags({"integrated_gradients": ig([0.01, 0.5, 0.01], [0.0, 0.4, 0.0])}, None),
            drift_flags(1, 0.1, Thresholds()).assign(example_id=2),
        ],
        ignore_index=True,
    )
    findings = _findings()
    resting = resting_on_flags(findings, flags, ["integrated_gradients", "leave_one_out"])
    assert list(resting) == [
        "", "integrated_gradients", "capture drift", "integrated_gradients", "", "", "integrated_gradients", "",
    ]  # fmt: skip
    # without IG among the references only the finding about IG itself rests on it
    assert list(resting_on_flags(findings, flags, ["leave_one_out"]))[1] == ""
    dependence = flag_dependence(findings, flags, ["integrated_gradients", "leave_one_out"]).set_index("finding")
    disagrees = dependence.loc["attention_disagrees"]
    assert (disagrees["n_assessable"], disagrees["n_resting"]) == (3, 2)
    assert disagrees["resting_on"] == "capture drift, integrated_gradients"
    assert (disagrees["n_holds_without"], disagrees["n_assessable_without"]) == (1, 1)
    assert math.isnan(dependence.loc["erasure_prefers_attributions", "share_without"])
    assert "attention_sink" not in dependence.index  # example 1's capture did not drift
    nothing = flag_dependence(findings, numerical_flags({"integrated_gradients": ig([0.0] * 3, [0.0] * 3)}), [])
    assert nothing.empty


def test_tolerance_thresholds_are_validated_and_documented():
    with pytest.raises(ValueError, match="ig_relative_convergence_delta"):
        Thresholds(ig_relative_convergence_delta=-0.1)
    with pytest.raises(ValueError, match="capture_drift"):
        Thresholds(capture_drift=float("inf"))
    meanings = Thresholds().to_frame().set_index("name")["meaning"]
    assert "convergence delta" in meanings["ig_relative_convergence_delta"]
    assert np.isclose(Thresholds().capture_drift, 1e-3)
