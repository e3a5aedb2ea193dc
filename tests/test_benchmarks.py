"""Smoke test of the benchmark harness: it runs, its rows have the promised shape, and the two sides agree.

No assertion here is about speed: a timed assertion on a shared machine fails at random. What must
hold everywhere is that our module and its reference compute the same thing (else the ratio compares
different work) and that the runner can still produce its table and results file.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import ENTRIES, load_entry
from benchmarks.__main__ import format_table, main

TINY_SIZES = [(2, 16, 32, 4), (1, 24, 32, 2)]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_entry("attention_speed")(quick=True, device="cpu", sizes=TINY_SIZES, repeats=3)


def test_attention_speed_covers_every_case(rows: list[dict]) -> None:
    cases = {(row["variant"], row["mask"], row["seq"]) for row in rows}
    assert cases == {
        (variant, mask, seq)
        for variant in ("no_weights", "with_weights")
        for mask in ("none", "padding", "causal")
        for _, seq, _, _ in TINY_SIZES
    }


def test_attention_speed_rows_are_well_formed(rows: list[dict]) -> None:
    for row in rows:
        assert row["samples"] >= 3 and row["calls_per_sample"] >= 1
        assert len(row["ours_times_s"]) == len(row["reference_times_s"]) == row["samples"]
        for key in ("ours_median_s", "reference_median_s", "ratio", "paired_ratio_q25", "paired_ratio_q75"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["case"], key)
        assert row["paired_ratio_q25"] <= row["paired_ratio_q75"]
        assert row["meets_target"] == (row["ratio"] <= row["target"])
        assert (row["weights_max_abs_diff"] is None) == (row["variant"] == "no_weights")
    json.dumps(rows)  # the runner writes them as they are


def test_ours_and_reference_compute_the_same_thing(rows: list[dict]) -> None:
    for row in rows:
        assert row["output_max_abs_diff"] < 1e-5, row["case"]
        if row["weights_max_abs_diff"] is not None:
            assert row["weights_max_abs_diff"] < 1e-5, row["case"]
        assert row["outputs_agree"], row["case"]


def test_table_has_one_line_per_row(rows: list[dict]) -> None:
    assert len(format_table(rows).splitlines()) == len(rows) + 2


def test_runner_rejects_unknown_entries() -> None:
    assert "attention_speed" in ENTRIES
    with pytest.raises(KeyError, match="registered"):
        load_entry("no_such_entry")
    with pytest.raises(SystemExit):
        main(["--only", "no_such_entry"])


@pytest.mark.parametrize("entry", ["attention_flow", "method_cost", "ray_engine"])
def test_other_entries_run_quickly_and_agree(entry: str) -> None:
    rows = load_entry(entry)(quick=True, device="cpu")
    assert rows and all(row["ratio"] > 0 and row.get("outputs_agree", True) for row in rows)
    if entry == "method_cost":
        from attn_probe import list_methods

        assert {row["method"] for row in rows} == set(list_methods()["id"])
    format_table(rows)  # the shared table prints every entry's rows
