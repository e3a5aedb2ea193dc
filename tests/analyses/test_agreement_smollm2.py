"""analyses.agreement_smollm2: its helpers, and a smoke run of the whole study on SmolLM2-135M."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from analyses import agreement_smollm2 as study
from attn_probe.data import agreement_prompts


# ----------------------------------------------------------------------------------------------------
# helpers (fast)
# ----------------------------------------------------------------------------------------------------
def test_sign_batches_split_by_number_and_cover_every_prompt_once():
    frame = agreement_prompts(n=20, seed=1)
    parts = study.sign_batches(frame, batch_size=3)
    assert all(part["expected_sign"].nunique() == 1 for part in parts)
    assert all(len(part) <= 3 for part in parts)
    ids = np.concatenate([part["prompt_id"].to_numpy() for part in parts])
    assert sorted(ids) == list(range(20))


def test_head_edits_group_heads_by_layer():
    edits = study.head_edits([(3, 1), (3, 4), (10, 0)], "uniform")
    assert sorted(edits) == [3, 10]
    weights = torch.full((1, 5, 2, 2), 0.5)
    weights[..., 0, :] = torch.tensor([1.0, 0.0])  # a causal first row: one key
    weights[0, :, 1] = torch.tensor([0.9, 0.1])
    edited = edits[3](weights, None)
    assert torch.allclose(edited[0, 1, 1], torch.tensor([0.5, 0.5])) and torch.allclose(
        edited[0, 4, 1], edited[0, 1, 1]
    )
    assert torch.equal(edited[0, 0], weights[0, 0])  # heads not listed are untouched
    assert torch.equal(edited[0, :, 0], weights[0, :, 0])  # the future keeps exactly zero weight
    with pytest.raises(ValueError, match="unknown intervention"):
        study.head_edits([(0, 0)], "zero")


def test_parse_defaults():
    full = study.parse([])
    assert full.limit == study.FULL_LIMIT and full.methods == study.METHODS and full.vz_limit == 24
    smoke = study.parse(["--smoke"])
    assert smoke.limit == study.SMOKE_LIMIT and smoke.vz_limit == 0 and smoke.random_sets == 3


# ----------------------------------------------------------------------------------------------------
# the smoke run (slow: loads smollm2-135m)
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("agreement_smollm2")
    assert study.main(["--smoke", "--out", str(out), "--resamples", "100"]) == 0
    return out


def _contains_estimate(frame: pd.DataFrame, column: str) -> None:
    rows = frame[[column, f"{column}_low", f"{column}_high"]].dropna()
    assert len(rows), f"no values of {column}"
    assert (rows[f"{column}_low"] <= rows[column] + 1e-9).all(), column
    assert (rows[column] <= rows[f"{column}_high"] + 1e-9).all(), column


@pytest.mark.slow
def test_smoke_run_writes_its_report_tables_and_figures(smoke):
    for name in ("report.md", "summary.json", "accuracy.png", "methods.png", "heads.png", "interventions.png"):
        assert (smoke / name).stat().st_size > 0, name
    report = (smoke / "report.md").read_text()
    for figure in ("accuracy.png", "methods.png", "heads.png", "interventions.png"):
        assert f"]({figure})" in report
    assert "SMOKE RUN" in report and "## Caveats" in report


@pytest.mark.slow
def test_smoke_ground_truth_points_at_the_nouns(smoke):
    per_prompt = pd.read_csv(smoke / "per_prompt.csv")
    assert len(per_prompt) == study.SMOKE_LIMIT
    # the subject-role tokens spell the subject word, the attractor-role tokens the attractor
    assert (per_prompt["subject_tokens"].str.strip() == per_prompt["subject"]).all()
    assert (per_prompt["attractor_tokens"].str.strip() == per_prompt["attractor"]).all()
    assert (per_prompt["subject_position"] < per_prompt["attractor_position"]).all()
    # the prompts end right before the verb: with the attractor itself, except in rc_object ("... the man liked")
    ends_with_attractor = per_prompt["template"] != "rc_object"
    last_attractor_token = per_prompt["attractor_position"] + per_prompt["n_attractor_tokens"] - 1
    assert (last_attractor_token[ends_with_attractor] == per_prompt["predicting_position"][ends_with_attractor]).all()
    assert (last_attractor_token[~ends_with_attractor] < per_prompt["predicting_position"][~ends_with_attractor]).all()
    assert (per_prompt["attractor_is_predicting_token"] == ends_with_attractor).all()
    assert (per_prompt["correct_prediction"] == (per_prompt["margin"] > 0)).all()


@pytest.mark.slow
def test_smoke_accuracy_table(smoke):
    accuracy = pd.read_csv(smoke / "accuracy.csv")
    shares = accuracy[accuracy["condition"] != "congruent - incongruent"]
    assert ((shares["accuracy"] >= 0) & (shares["accuracy"] <= 1)).all()
    _contains_estimate(accuracy, "accuracy")
    _contains_estimate(accuracy, "margin")
    overall = accuracy[accuracy["template"] == "all attractor prompts"].iloc[0]
    assert overall["n_accuracy"] == study.SMOKE_LIMIT
    controls = accuracy[(accuracy["template"] == "all templates") & (accuracy["condition"] == "no attractor")]
    assert controls.iloc[0]["n_accuracy"] == 8


@pytest.mark.slow
def test_smoke_method_rankings_and_position_baselines(smoke):
    methods = pd.read_csv(smoke / "methods.csv")
    assert methods["method"].tolist() == [*study.SMOKE_METHODS, *study.BASELINES]
    for column in ("subject_first", "subject_first_abs", "rho_margin"):
        _contains_estimate(methods, column)
    scores = pd.read_csv(smoke / "method_scores.csv")
    assert set(scores["subject_first"]) <= {0.0, 0.5, 1.0}
    single = scores[(scores["n_subject_tokens"] == 1) & (scores["n_attractor_tokens"] == 1)]
    assert len(single)
    # position alone: the attractor is always nearer the verb, the subject always farther
    assert (single.loc[single["method"] == "recency", "subject_first"] == 0).all()
    assert (single.loc[single["method"] == "distance_to_verb", "subject_first"] == 1).all()


@pytest.mark.slow
def test_smoke_heads_and_interventions(smoke):
    heads = pd.read_csv(smoke / "heads.csv")
    assert len(heads) == 30 * 9 and not heads.duplicated(["layer", "head"]).any()
    assert heads["subject_share"].between(0, 1).all() and heads["attractor_share"].between(0, 1).all()
    assert (heads["subject_share"] + heads["attractor_share"] <= 1 + 1e-6).all()
    assert heads["selected"].value_counts().to_dict() == {"subject_heads": 3, "attractor_heads": 3}
    head_sets = pd.read_csv(smoke / "head_sets.csv")
    assert len(head_sets) == 4 and set(head_sets["intervention"]) == {"uniform", "permute"}
    _contains_estimate(head_sets, "delta_margin")
    assert head_sets["share_random_as_harmful"].between(0, 1).all()
    random_sets = pd.read_csv(smoke / "random_head_sets.csv")
    assert len(random_sets) == 3 * 2 + 3  # any heads x (uniform, permute), and same-layer sets (uniform)
    matched = random_sets[random_sets["kind"] != "any heads"]
    subject_layers = sorted(int(h.split("H")[0][1:]) for h in head_sets["heads"].iloc[0].split())
    for heads in matched["heads"]:  # drawn from the subject heads' own layers, never the subject heads themselves
        assert sorted(int(h.split("H")[0][1:]) for h in heads.split()) == subject_layers
        assert not set(heads.split()) & set(head_sets["heads"].iloc[0].split())
    assert pd.read_csv(smoke / "layer_ablation.csv")["layer"].tolist() == list(range(30))


@pytest.mark.slow
def test_evaluator_no_edit_is_exactly_zero_and_an_edit_moves_the_margin():
    from attn_probe import Probe

    torch.set_num_threads(1)
    probe = Probe.load("smollm2-135m")
    frame = agreement_prompts(n=4, seed=2)
    evaluator = study.Evaluator(probe, frame, batch_size=8)
    assert np.array_equal(evaluator.delta([], "uniform"), np.zeros(4))
    assert np.abs(evaluator.delta([(0, h) for h in range(9)], "uniform")).max() > 1e-3


@pytest.mark.slow
def test_smoke_summary_json(smoke):
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["n_prompts"] == study.SMOKE_LIMIT and summary["smoke"] is True
    for value in summary["accuracy"].values():
        assert value["low"] <= value["estimate"] <= value["high"]
    assert set(summary["head_sets"]) == {
        f"{s}/{h}" for s in ("subject_heads", "attractor_heads") for h in ("uniform", "permute")
    }
