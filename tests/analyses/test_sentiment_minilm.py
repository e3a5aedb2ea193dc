"""analyses.sentiment_minilm: its helpers, and a smoke run of the whole study on the offline sentiment model."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import sentiment_minilm as study


# ----------------------------------------------------------------------------------------------------
# helpers (fast)
# ----------------------------------------------------------------------------------------------------
def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    values = np.arange(20, dtype=float)
    first = study.bootstrap_ci(values, resamples=300, seed=3)
    assert first == study.bootstrap_ci(values, resamples=300, seed=3)
    mean, low, high, n = first
    assert mean == pytest.approx(9.5) and n == 20
    assert low < mean < high
    assert study.bootstrap_ci([2.0, 2.0, 2.0], resamples=50)[:3] == (2.0, 2.0, 2.0)
    assert study.bootstrap_ci([1.0, np.nan, 3.0], resamples=50)[3] == 2  # NaN is left out, not counted
    assert np.isnan(study.bootstrap_ci([], resamples=50)[0])


def test_wilson_columns_and_text():
    row = study.wilson_columns(3, 4, "accuracy")
    assert row["accuracy"] == 0.75 and row["n_accuracy"] == 4
    assert row["accuracy_low"] < 0.75 < row["accuracy_high"] <= 1
    assert study.ci_text(0.5, 0.25, 0.75, percent=True) == "50% [25%, 75%]"
    assert study.ci_text(float("nan"), 0, 1) == "n/a"


def test_markdown_table_escapes_pipes_and_rounds():
    text = study.markdown_table(pd.DataFrame({"a": ["x|y"], "b": [0.123456], "c": [np.nan]}))
    assert text.splitlines()[2] == "| x\\|y | 0.123 | n/a |"


def test_parse_defaults():
    assert study.parse([]).limit == study.FULL_LIMIT
    smoke = study.parse(["--smoke"])
    assert smoke.limit == study.SMOKE_LIMIT and smoke.methods == study.SMOKE_METHODS
    assert study.parse(["--smoke", "--limit", "7"]).limit == 7


# ----------------------------------------------------------------------------------------------------
# the smoke run (slow: loads minilm-sentiment)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sentiment_minilm")
    code = study.main(["--smoke", "--out", str(out), "--run-dir", str(out / "run"), "--resamples", "100"])
    assert code == 0
    return out


def _contains_estimate(frame: pd.DataFrame, column: str) -> None:
    rows = frame[[column, f"{column}_low", f"{column}_high"]].dropna()
    assert len(rows), f"no values of {column}"
    assert (rows[f"{column}_low"] <= rows[column] + 1e-9).all(), column
    assert (rows[column] <= rows[f"{column}_high"] + 1e-9).all(), column


@pytest.mark.slow
def test_smoke_run_writes_its_report_tables_and_figures(smoke):
    for name in ("report.md", "summary.json", "methods.png", "layers.png", "heads.png"):
        assert (smoke / name).stat().st_size > 0, name
    for name in ("methods", "layers", "heads", "per_example", "robustness", "accuracy", "findings_summary"):
        assert len(pd.read_csv(smoke / f"{name}.csv")), name
    assert not (smoke / "run").exists()  # the run directory (full matrices) is deleted after summarising
    report = (smoke / "report.md").read_text()
    for figure in ("methods.png", "layers.png", "heads.png"):
        assert f"]({figure})" in report
    assert "SMOKE RUN" in report and "## Caveats" in report


@pytest.mark.slow
def test_smoke_method_table_has_every_method_with_intervals(smoke):
    methods = pd.read_csv(smoke / "methods.csv")
    expected = [*study.SMOKE_METHODS, *study.EXTRA_METHODS, *study.BASELINES]
    assert methods["method"].tolist() == expected
    for column in ("tau_leave_one_out", "comprehensiveness", "comp_minus_random", "sufficiency", "precision", "lift"):
        _contains_estimate(methods, column)
    random = methods.set_index("method").loc["random"]
    assert random["comp_minus_random"] == 0.0  # paired against itself
    assert ((methods["precision"] >= 0) & (methods["precision"] <= 1)).all()


@pytest.mark.slow
def test_smoke_per_example_numbers_have_known_answers(smoke):
    per_example = pd.read_csv(smoke / "per_example.csv")
    assert per_example["example_id"].nunique() == study.SMOKE_LIMIT
    first = per_example[per_example["method"] == "position_first"].set_index("example_id")["tau_leave_one_out"]
    last = per_example[per_example["method"] == "position_last"].set_index("example_id")["tau_leave_one_out"]
    # the two position rankings are exact reverses of each other: their Kendall taus with anything are opposite
    assert np.allclose(first.sort_index(), -last.sort_index())
    # the second pass rebuilt the run's explanations from its scores table: same agreement to the last bit
    consistency = pd.read_csv(smoke / "consistency.csv").iloc[0]
    assert consistency["pairs_compared"] > 0 and consistency["max_abs_tau_difference"] == 0.0


@pytest.mark.slow
def test_smoke_layer_and_head_tables_cover_the_model(smoke):
    layers = pd.read_csv(smoke / "layers.csv")
    assert layers["layer"].tolist() == list(range(6))  # MiniLM: 6 layers x 12 heads
    for column in ("raw_tau_leave_one_out", "uniform_tvd", "permute_tvd", "frozen_tvd", "special_share"):
        _contains_estimate(layers, column)
    assert ((layers["uniform_tvd"] >= 0) & (layers["uniform_tvd"] <= 1)).all()
    assert ((layers["special_share"] >= 0) & (layers["special_share"] <= 1 + 1e-6)).all()
    heads = pd.read_csv(smoke / "heads.csv")
    assert len(heads) == 72 and not heads.duplicated(["layer", "head"]).any()


@pytest.mark.slow
def test_smoke_summary_json(smoke):
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["n_snippets"] == study.SMOKE_LIMIT and summary["smoke"] is True
    accuracy = summary["accuracy"]
    assert 0 <= accuracy["low"] <= accuracy["estimate"] <= accuracy["high"] <= 1
    assert set(summary["methods"]) == {*study.SMOKE_METHODS, *study.EXTRA_METHODS, *study.BASELINES}
    assert len(summary["layers"]) == 6
