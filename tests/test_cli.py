"""The command line: the main job, runs on a dataset, summaries, and one-line errors for bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from attn_probe.cli import EXIT_BAD_INPUT, main
from attn_probe.store import load_run

FAST = ["--methods", "raw_attention", "attention_rollout", "saliency", "leave_one_out", "--checks", "agreement",
        "erasure", "sinks", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_bert, tokenizer):
    """The tiny BERT and the MiniLM tokenizer saved as a Hugging Face directory: what --model takes."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def reviews(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame(
        {"review": ["a gorgeous, witty movie", "dull", "the plot is thin", "superb acting"], "label": [1, 0, 0, 1]}
    ).to_csv(path, index=False)
    return path


def run_args(model_dir, data, out, *extra: str) -> list[str]:
    return ["run", "--model", str(model_dir), "--data", str(data), "--out", str(out), *FAST, *extra]


def test_run_writes_a_run_and_summary_reads_it(model_dir, reviews, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(model_dir, reviews, out, "--text-column", "review", "--label-column", "label")) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (4 examples)" in printed and "What the run found" in printed
    run = load_run(out)
    assert run.status == "complete" and sorted(run.done()) == [0, 1, 2, 3]
    assert run.table("examples")["label"].tolist() == [1, 0, 0, 1]
    assert main(["summary", str(out)]) == 0
    assert "ranks tokens unlike the gradient / erasure attributions" in capsys.readouterr().out
    # the same command again: nothing to do, nothing duplicated
    assert main(run_args(model_dir, reviews, out, "--text-column", "review", "--label-column", "label")) == 0
    assert len(load_run(out).table("examples")) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, d: [*a[:2], str(d / "no-such-model"), *a[3:], "--text-column", "review"], "no-such-model"),
        (lambda a, d: [*a[:4], str(d / "missing.csv"), *a[5:]], "no such file"),
        (lambda a, d: [*a, "--text-column", "body"], "no column 'body'"),
        (lambda a, d: [*a, "--text-column", "review", "--methods", "saliency"], "derived from attention"),
    ],
)
def test_bad_input_exits_2_with_one_line(model_dir, reviews, tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown name is not looked up on the hub (no network here)
    arguments = change(run_args(model_dir, reviews, tmp_path / "run"), tmp_path)
    assert main(arguments) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # (a model load may have drawn its progress bar before)
    assert last.startswith("attn-probe run: error:") and message in last


def test_labels_outside_the_classes_and_mixed_runs_are_refused(model_dir, tmp_path, capsys):
    data = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["fine", "bad"], "label": [0, 7]}).to_csv(data, index=False)
    assert main(run_args(model_dir, data, tmp_path / "a", "--label-column", "label")) == EXIT_BAD_INPUT
    assert "outside this model's classes" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    pd.DataFrame({"text": ["fine", "bad"]}).to_csv(good, index=False)
    assert main(run_args(model_dir, good, tmp_path / "b")) == 0
    other = [a if a != "leave_one_out" else "input_x_gradient" for a in run_args(model_dir, good, tmp_path / "b")]
    assert main(other) == EXIT_BAD_INPUT
    assert "different run" in capsys.readouterr().err


def test_summary_of_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "not an attn_probe run" in capsys.readouterr().err


def test_toy_runs_and_reports_attention_and_counterfactuals(capsys):
    assert main(["toy", "--steps", "40", "--examples", "64", "--position", "alibi"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "position=alibi" in out
    assert "on_markers" in out and "uniform_baseline" in out and "permuted" in out
    # 2 layers x 4 heads of attention rows are reported
    assert sum(line.strip().startswith(("0 ", "1 ")) for line in out.splitlines()) >= 8


@pytest.mark.parametrize("arguments", [["toy", "--steps", "0"], ["toy", "--position", "xpos"], [], ["run"]])
def test_bad_arguments_exit_with_a_message(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert "attn-probe" in capsys.readouterr().err


def test_models_lists_the_offline_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm", "smollm2-135m", "minilm-sentiment"):
        assert f"  {name} " in out
    assert "AttentionInterface" in out


@pytest.mark.slow
def test_demo_runs_the_main_job(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--limit", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "classified as the human raters did" in out and "What the run found" in out
    assert load_run(tmp_path / "demo").status == "complete"


def test_analysis_hands_its_options_to_the_study(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analysis", "flow_layers", "--help"])
    assert exit_info.value.code == 0
    assert "--smoke" in capsys.readouterr().out
