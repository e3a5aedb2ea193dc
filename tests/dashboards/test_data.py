"""What the pages show, prepared without Streamlit: one example from a result or a run, the run's example table
under filters, and the helpers of the position page."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attn_probe import Probe
from attn_probe.report import misleading_ranking
from attn_probe.store import load_run
from dashboards.data import (
    RunFilters,
    attention_frame,
    default_example,
    example_from_result,
    example_from_run,
    example_table,
    head_grid,
    study_tables,
    synthetic_example,
    synthetic_task,
    synthetic_tokens,
)
from tests.dashboards.conftest import CHECKS, METHODS, TEXTS


@pytest.fixture(scope="module")
def result(model_dir):
    return Probe.load(str(model_dir)).explain(TEXTS, methods=METHODS, checks=CHECKS, batch_size=2)


def test_an_example_of_a_result_has_its_rows_and_its_real_attention(result):
    data = example_from_result(result, 3)  # in the second batch: its own offset
    assert set(data.scores["example_id"]) == {3} and set(data.findings["example_id"]) == {3}
    assert data.row["text"] == TEXTS[3]
    n = int(data.row["n_tokens"])
    assert data.attention.shape == (2, 4, n, n)  # [layers, heads, real tokens, real tokens]: padding dropped
    assert np.allclose(data.attention.sum(-1), 1.0, atol=1e-5)
    assert data.tokens[0] == "[CLS]" and data.tokens[-1] == "[SEP]" and data.special[0] and not data.special[1]
    table = data.score_table()
    assert list(table.index) == METHODS and table.shape == (len(METHODS), n)
    assert table.columns[1].startswith("1: ")
    with pytest.raises(ValueError, match="no example 9"):
        example_from_result(result, 9)


def test_an_example_of_a_run_equals_the_same_example_explained_now(result, run_dir):
    run = load_run(run_dir)
    stored, fresh = example_from_run(run, 1), example_from_result(result, 1)
    columns = ["method", "token_index", "token", "score"]
    pd.testing.assert_frame_equal(stored.scores[columns], fresh.scores[columns], check_dtype=False, atol=1e-6)
    assert stored.attention.shape == fresh.attention.shape
    assert np.abs(stored.attention - fresh.attention).max() < 2e-3  # stored as float16
    assert set(stored.evidence) >= {"agreement", "head_agreement", "sinks", "attention_summary"}
    assert stored.methods == METHODS
    with pytest.raises(ValueError, match="has no example 7"):
        example_from_run(run, 7)


def test_the_example_table_counts_the_filtered_findings(run_dir):
    run = load_run(run_dir)
    examples, findings = run.table("examples"), run.table("findings")
    table = example_table(examples, findings)
    assert sorted(table["example_id"]) == [0, 1, 2, 3]
    for row in table.itertuples():
        mine = findings[(findings["example_id"] == row.example_id) & findings["holds"].notna()]
        assert row.judged == len(mine) and row.holding == int(mine["holds"].astype(bool).sum())
    assert table["misleading"].is_monotonic_decreasing
    heads = RunFilters(findings=("attention_sink",), heads=(0,))
    only = example_table(examples, findings, heads)
    sinks = findings[(findings["finding"] == "attention_sink") & (findings["head"] == 0)]
    assert only["judged"].sum() == sinks["holds"].notna().sum()
    short = example_table(examples, findings, RunFilters(length=(0, 6)))
    assert set(short["example_id"]) == set(examples.loc[examples["n_tokens"] <= 6, "example_id"])


def test_a_run_opens_on_its_most_misleading_example(run_dir):
    run = load_run(run_dir)
    findings = run.table("findings")
    assert default_example(run.table("examples"), findings) == int(misleading_ranking(findings).index[0])
    assert default_example(run.table("examples"), findings.iloc[0:0]) == 0


def test_head_grid_averages_per_head_rows_only():
    table = pd.DataFrame(
        {
            "layer": [0, 0, 0, 1, 1],
            "head": [0, 0, 1, pd.NA, 0],
            "kendall_tau": [0.2, 0.4, -1.0, 9.0, 0.5],
        }
    )
    grid = head_grid(table, "kendall_tau")
    assert grid.to_dict("records") == [
        {"layer": 0, "head": 0, "kendall_tau": pytest.approx(0.3)},
        {"layer": 0, "head": 1, "kendall_tau": -1.0},
        {"layer": 1, "head": 0, "kendall_tau": 0.5},
    ]
    with pytest.raises(ValueError, match="lacks"):
        head_grid(table, "special_share")


def test_attention_frame_is_one_head_tidy():
    attention = np.random.default_rng(0).dirichlet(np.ones(3), size=(2, 2, 3))  # [L, H, n, n]
    frame = attention_frame(attention, 1, 0, ["a", "b", "a"])
    assert len(frame) == 9 and frame.groupby("query")["weight"].sum().to_numpy() == pytest.approx(1.0)
    assert frame.loc[(frame["query"] == 2) & (frame["key"] == 1), "weight"].item() == attention[1, 0, 2, 1]
    assert frame["key_label"].nunique() == 3  # the two "a" stay apart
    with pytest.raises(ValueError, match="no layer 2"):
        attention_frame(attention, 2, 0, ["a", "b", "a"])


def test_synthetic_tokens_mark_the_decisive_token():
    example = synthetic_example("offset", 0)
    tokens = synthetic_tokens(example, synthetic_task("offset"))
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert sum(token.endswith("*") for token in tokens) == int(example.relevant[0].sum()) == 1
    assert sum("^" in token for token in tokens) == int(example.cues[0].sum()) == 1


def test_missing_study_results_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m analyses\.position_variants"):
        study_tables(tmp_path)
