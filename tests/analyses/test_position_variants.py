"""The position-variants study: its helpers compute what they say, and a smoke run writes a coherent report
(files, columns, counts, intervals around their estimates, a random baseline at its expectation, and the known
answer: erasure finds MarkedToken's marker)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import position_variants as study
from attn_probe.attention.models import TransformerConfig
from attn_probe.attention.toy_tasks import CLS, PAD, SEP
from attn_probe.attention.training import build_model, train
from attn_probe.data.synthetic import MarkedToken


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def test_rank_recovery_perfect_worst_and_ties():
    relevant = np.array([False, True, False, False])
    assert study.rank_recovery(np.array([0.1, 0.9, 0.2, 0.3]), relevant) == (1.0, 1.0, 1.0)
    assert study.rank_recovery(np.array([0.5, 0.0, 0.2, 0.3]), relevant) == (0.0, 0.0, 0.0)
    # all tied: expectations of a random tie-break
    precision, auc, top1 = study.rank_recovery(np.ones(4), relevant)
    assert precision == pytest.approx(0.25) and auc == pytest.approx(0.5) and top1 == pytest.approx(0.25)
    # two relevant, one in the top two, the other last
    precision, auc, _ = study.rank_recovery(np.array([0.9, 0.8, 0.1, 0.5]), np.array([True, False, True, False]))
    assert precision == pytest.approx(0.5) and auc == pytest.approx(0.5)
    assert all(math.isnan(v) for v in study.rank_recovery(np.ones(3), np.zeros(3, dtype=bool)))


def test_hierarchical_bootstrap_contains_point_and_is_deterministic():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0.5, 0.1, 50), rng.normal(0.7, 0.1, 60), rng.normal(0.6, 0.1, 40)]
    point, low, high = study.hierarchical_bootstrap(groups, resamples=500, seed=3)
    assert low <= point <= high
    assert point == pytest.approx(np.mean([g.mean() for g in groups]))
    assert study.hierarchical_bootstrap(groups, resamples=500, seed=3) == (point, low, high)
    # one group: an ordinary bootstrap of the mean, roughly mean +- 2 standard errors
    single = [rng.normal(0.0, 1.0, 400)]
    point, low, high = study.hierarchical_bootstrap(single, resamples=2000, seed=0)
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.25)
    assert all(math.isnan(v) for v in study.hierarchical_bootstrap([np.array([np.nan])]))


def test_wilson_interval():
    low, high = study.wilson(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    assert study.wilson(10, 10)[1] == pytest.approx(1.0)


def test_token_batch_marks_special_tokens_and_padding():
    ids = torch.tensor([[CLS, 5, 6, SEP, PAD], [CLS, 7, SEP, PAD, PAD]])
    batch = study.token_batch(ids, (ids != PAD).long(), lambda t: f"t{t}", (CLS, SEP))
    assert batch.special_tokens_mask.tolist() == [[True, False, False, True, True], [True, False, True, True, True]]
    assert batch.tokens[1] == ["t1", "t7", "t2"] and batch.words[0] == ["t5", "t6"]
    assert batch.word_ids[0] == [None, 0, 1, None]
    assert [batch.texts[0][s:e] for s, e in batch.word_spans[0]] == ["t5", "t6"]


def test_explanation_rows_are_deterministic_and_restricted_to_correct_examples():
    torch.set_num_threads(1)
    task = MarkedToken()
    settings = study.Settings(examples=24, profile_examples=64, methods=("raw_attention", "leave_one_out", "random"))
    config = TransformerConfig(vocab_size=task.vocab_size, embed_dim=16, num_heads=2, num_layers=1, ffn_dim=32)
    model = build_model(config, task, seed=0)
    train(model, task, steps=40, seed=0)
    keys = {"variant": "learned", "task": "marked", "seed": 0}
    first, extras = study._explain_model(model, task, settings, 0, keys)
    second, _ = study._explain_model(model, task, settings, 0, keys)
    pd.testing.assert_frame_equal(first, second)
    assert set(first["method"]) == {"raw_attention", "leave_one_out", "random"}
    assert first.groupby("method").size().eq(extras["n_scored"]).all()
    assert extras["n_scored"] <= extras["n_explained"] == 24


# ----------------------------------------------------------------------------------------------------
# smoke run
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("position_variants")
    assert study.main(["--smoke", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_smoke_writes_every_file(smoke):
    for name in ("report.md", "summary.json", "accuracy.csv", "recovery.csv", "gaps.csv", "layer_position.csv",
                 "distance_profile.csv", "recovery_by_seed.csv", "accuracy.png", "recovery.png"):  # fmt: skip
        assert (smoke / name).stat().st_size > 0, name
    report = (smoke / "report.md").read_text()
    assert "Smoke run" in report and "## Protocol" in report and "## Caveats" in report
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["models"] == len(study.SMOKE["variants"]) * len(study.SMOKE["tasks"]) * len(study.SMOKE["seeds"])


@pytest.mark.slow
def test_smoke_accuracy_table(smoke):
    accuracy = pd.read_csv(smoke / "accuracy.csv")
    assert len(accuracy) == 6
    assert set(accuracy["variant"]) == set(study.SMOKE["variants"]) and set(accuracy["task"]) == {"marked", "offset"}
    assert accuracy["accuracy"].between(0, 1).all()
    assert (accuracy["accuracy_low"] <= accuracy["accuracy"]).all() and (
        accuracy["accuracy"] <= accuracy["accuracy_high"]
    ).all()
    assert (accuracy["learned"] == (accuracy["accuracy"] >= 0.9)).all()
    # not-learned models are excluded from the explanation comparison
    recovery = pd.read_csv(smoke / "recovery.csv")
    learned = set(map(tuple, accuracy.loc[accuracy["learned"], ["task", "variant"]].to_numpy()))
    assert set(map(tuple, recovery[["task", "variant"]].drop_duplicates().to_numpy())) == learned


@pytest.mark.slow
def test_smoke_intervals_contain_estimates(smoke):
    recovery = pd.read_csv(smoke / "recovery.csv")
    assert {"precision", "precision_low", "precision_high", "auc", "top1", "chance_precision", "n_examples"} <= set(
        recovery.columns
    )
    for metric in ("precision", "auc", "top1"):
        rows = recovery.dropna(subset=[metric])
        assert (rows[f"{metric}_low"] <= rows[metric] + 1e-12).all() and (
            rows[metric] <= rows[f"{metric}_high"] + 1e-12
        ).all()
        assert rows[metric].between(0, 1).all()
    gaps = pd.read_csv(smoke / "gaps.csv")
    assert not gaps.empty
    assert (
        (gaps["gap_precision_low"] <= gaps["gap_precision"] + 1e-12)
        & (gaps["gap_precision"] <= gaps["gap_precision_high"] + 1e-12)
    ).all()


@pytest.mark.slow
def test_smoke_random_baseline_near_its_expectation(smoke):
    recovery = pd.read_csv(smoke / "recovery.csv")
    random = recovery[recovery["method"] == "random"]
    assert not random.empty
    pooled = np.average(random["precision"] - random["chance_precision"], weights=random["n_examples"])
    assert abs(pooled) < 0.08
    assert abs(np.average(random["auc"], weights=random["n_examples"]) - 0.5) < 0.08


@pytest.mark.slow
def test_smoke_known_answer_erasure_finds_the_marker(smoke):
    recovery = pd.read_csv(smoke / "recovery.csv")
    erasure = recovery[(recovery["task"] == "marked") & (recovery["method"] == "leave_one_out")]
    assert len(erasure) >= 2  # MarkedToken is learned by these variants even in smoke mode
    assert (erasure["precision"] >= 0.85).all()
    layers = pd.read_csv(smoke / "layer_position.csv")
    # the position term's share is undefined where position enters at the embeddings, defined for t5 / alibi
    assert layers.loc[layers["variant"] == "learned", "position_logit_share"].isna().all()
    assert layers.loc[layers["variant"].isin(["t5", "alibi"]), "position_logit_share"].between(-1, 1).all()
    assert (layers["locality"] > 0).all() and (layers["locality_uniform"] > 0).all()
