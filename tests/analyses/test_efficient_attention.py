"""The efficient-attention study: its linear-vs-full comparison reads the gap table right, and a smoke run writes
a coherent report with every attention kind trained and probed."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analyses import efficient_attention as study


def gap_row(variant: str, point: float, low: float, high: float, task: str = "marked") -> dict:
    return {"task": task, "variant": variant, "method": "raw_attention", "reference": "leave_one_out",
            "gap_precision": point, "gap_precision_low": low, "gap_precision_high": high}  # fmt: skip


def test_linear_vs_full_calls_a_difference_only_when_the_intervals_part():
    gaps = pd.DataFrame(
        [
            gap_row("full", -0.05, -0.10, 0.00),
            gap_row("linear", -0.40, -0.50, -0.30),  # far below: misleads more
            gap_row("full", -0.05, -0.10, 0.00, task="pair"),
            gap_row("linear", -0.08, -0.15, -0.01, task="pair"),  # overlapping: no evidence
            gap_row("full", -0.2, -0.3, -0.1, task="far"),  # no linear row (not learned): left out
        ]
    )
    table = study.linear_vs_full(gaps).set_index("task")
    assert list(table.index) == ["marked", "pair"]
    assert table.loc["marked", "verdict"] == "linear misleads more"
    assert table.loc["marked", "difference"] == pytest.approx(-0.35)
    assert table.loc["pair", "verdict"] == "no evidence of a difference" and table.loc["pair", "intervals_overlap"]
    assert study.linear_vs_full(pd.DataFrame()).empty


def test_the_far_task_puts_the_decisive_token_outside_the_window():
    task = study.tasks_for(window=3)["far"]()
    assert task.offset == 6 > 3


@pytest.mark.slow
def test_smoke_run_trains_and_probes_every_kind(tmp_path):
    assert study.main(["--smoke", "--tasks", "marked", "--out", str(tmp_path)]) == 0
    accuracy = pd.read_csv(tmp_path / "accuracy.csv")
    assert sorted(accuracy["variant"]) == sorted(study.KINDS) and (accuracy["task"] == "marked").all()
    recovery = pd.read_csv(tmp_path / "recovery.csv")
    learned = set(accuracy.loc[accuracy["learned"], "variant"])
    assert set(recovery["variant"]) == learned and learned  # MarkedToken is learned in the smoke steps
    erasure = recovery[recovery["method"] == "leave_one_out"].set_index("variant")["precision"]
    assert (erasure > 0.9).all()  # the known answer: erasing the one marker flips the class
    rows = recovery[recovery["method"] == "random"]
    assert (rows["precision_low"] <= rows["precision"]).all() and (rows["precision"] <= rows["precision_high"]).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["study"] == "efficient_attention" and summary["models"] == len(study.KINDS)
    report = (tmp_path / "report.md").read_text()
    assert "## Does the implied attention of linear models mislead more than softmax attention?" in report
