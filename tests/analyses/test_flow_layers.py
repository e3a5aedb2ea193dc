"""The flow-vs-rollout-vs-raw study: the agreement-derived task carries the right ground truth, and a smoke run
writes a coherent report (files, columns, intervals around their estimates, a random baseline near 0, the
layer-0 identity of the three attention methods, and the known answer: erasure's top token is the subject)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import flow_layers as study
from attn_probe.attention.toy_tasks import CLS, PAD, SEP
from attn_probe.data.agreement import NOUNS


@pytest.fixture(scope="module")
def task():
    return study.AgreementNumber(train_prompts=400, test_prompts=100)


def test_vocabulary_covers_every_word(task):
    words = set(task.words)
    assert task.words[:3] == ["[PAD]", "[CLS]", "[SEP]"] and len(words) == len(task.words)
    assert {n.plural for n in NOUNS} <= words and {n.singular for n in NOUNS} <= words
    assert set(study.PREFIX_WORDS) <= words


def test_pools_are_disjoint_and_labels_follow_the_subject(task):
    assert not set(task.train["text"]) & set(task.test["text"])
    batch = task.sample(64, torch.Generator().manual_seed(0))
    plural = {n.plural for n in NOUNS}
    assert batch.relevant.sum(1).eq(1).all() and batch.cues.sum(1).eq(1).all()
    for row in range(64):
        subject = task.name(int(batch.input_ids[row][batch.relevant[row]]))
        attractor = task.name(int(batch.input_ids[row][batch.cues[row]]))
        assert int(batch.labels[row]) == int(subject in plural)
        previous = task.name(int(batch.input_ids[row, int(batch.relevant[row].nonzero()) - 1]))
        assert previous == "The" and attractor in {n.singular for n in NOUNS} | plural
    ids = batch.input_ids
    assert (ids[:, 0] == CLS).all() and ((ids == SEP).sum(1) == 1).all()
    assert batch.attention_mask.equal((ids != PAD).long())
    # prefixes move the subject: more than one column holds it
    assert len(set(batch.relevant.float().argmax(1).tolist())) > 1
    again = task.sample(64, torch.Generator().manual_seed(0))
    assert again.input_ids.equal(ids)


def test_held_out_gives_each_test_prompt_once(task):
    batch, frame = task.held_out()
    assert len(frame) == len(task.test) == batch.input_ids.shape[0]
    assert batch.labels.tolist() == (frame["subject_number"] == "plural").astype(int).tolist()
    assert task.held_out()[0].input_ids.equal(batch.input_ids)


# ----------------------------------------------------------------------------------------------------
# smoke run
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_layers")
    assert study.main(["--smoke", "--out", str(out)]) == 0
    return out


@pytest.mark.slow
def test_smoke_writes_every_file(smoke):
    for name in ("report.md", "summary.json", "models.csv", "correlation.csv", "differences.csv", "truth.csv",
                 "correlation_by_layer.png", "top_token_by_layer.png"):  # fmt: skip
        assert (smoke / name).stat().st_size > 0, name
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["models"] == len(study.SMOKE["variants"]) * len(study.SMOKE["seeds"])
    assert "Smoke run" in (smoke / "report.md").read_text()


@pytest.mark.slow
def test_smoke_model_learned_and_tables_are_complete(smoke):
    models = pd.read_csv(smoke / "models.csv")
    assert models["held_out_accuracy"].between(0, 1).all()
    assert (
        (models["held_out_low"] <= models["held_out_accuracy"])
        & (models["held_out_accuracy"] <= models["held_out_high"])
    ).all()
    assert models["learned"].all()  # the task is easy: the smoke model learns it
    correlation = pd.read_csv(smoke / "correlation.csv")
    layers = study.SMOKE["layers"]
    methods = (*study.LAYERED, *study.BASELINES)
    assert len(correlation) == len(study.REFERENCES) * len(methods) * layers
    assert set(correlation["layer"]) == set(range(layers))
    for statistic in ("spearman_rho", "kendall_tau"):
        assert correlation[statistic].between(-1, 1).all()
        assert (
            (correlation[f"{statistic}_low"] <= correlation[statistic] + 1e-12)
            & (correlation[statistic] <= correlation[f"{statistic}_high"] + 1e-12)
        ).all()
    differences = pd.read_csv(smoke / "differences.csv")
    assert (
        (differences["difference_low"] <= differences["difference"] + 1e-12)
        & (differences["difference"] <= differences["difference_high"] + 1e-12)
    ).all()


@pytest.mark.slow
def test_smoke_random_baseline_near_zero_and_layer_zero_identity(smoke):
    correlation = pd.read_csv(smoke / "correlation.csv")
    random = correlation[correlation["method"] == "random"]
    assert random["spearman_rho"].abs().max() < 0.2
    assert ((random["spearman_rho_low"] < 0) & (random["spearman_rho_high"] > 0)).mean() >= 0.5
    # one layer: rollout and flow rank the content tokens exactly as the raw attention row does
    zero = correlation[(correlation["layer"] == 0) & correlation["method"].isin(study.LAYERED)]
    spread = zero.groupby("reference")["spearman_rho"].agg(lambda v: v.max() - v.min())
    assert (spread < 1e-9).all()
    differences = pd.read_csv(smoke / "differences.csv")
    assert differences.loc[differences["layer"] == 0, "difference"].abs().max() < 1e-9


@pytest.mark.slow
def test_smoke_known_answer_erasure_points_at_the_subject(smoke):
    truth = pd.read_csv(smoke / "truth.csv")
    erasure = truth[(truth["method"] == "leave_one_out") & (truth["layer"] == -1)]
    assert len(erasure) == 1 and float(erasure["top1_subject"].iloc[0]) >= 0.9
    assert float(erasure["top1_attractor"].iloc[0]) <= 0.1
    random = truth[(truth["method"] == "random")]
    assert np.all(random["top1_subject"] < 0.5)
