"""Bad inputs, end to end: each gets a clear message (or a warning that says what will be missing), through the
API and the command line. The storage cases (damaged chunks, read-only or full disks) are in tests/store, NaN /
inf in a model in tests/capture/test_nonfinite.py, the dashboard's in tests/dashboards. docs/robustness.md
lists every case and its outcome."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers as tf

from attn_probe import Probe
from attn_probe.capture import Target
from attn_probe.cli import EXIT_BAD_INPUT, main
from attn_probe.models.families import UnsupportedModelError

METHODS = ["raw_attention", "attention_rollout", "saliency"]
CHECKS = ["agreement", "sinks"]


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory, tokenizer):
    """A tiny BERT classifier whose maximum length is 32 tokens, saved as a model directory."""
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("short")
    tf.BertForSequenceClassification(config).save_pretrained(folder)
    short = tf.AutoTokenizer.from_pretrained(tokenizer.name_or_path, model_max_length=32)
    short.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def probe(short_model_dir):
    return Probe.load(str(short_model_dir))


def run_cli(model_dir, tmp_path, rows: list[str], capsys) -> tuple[int, list[str]]:
    """``attn-probe run`` on a CSV of ``rows``: its exit code and the lines it wrote on stderr that are not
    progress bars or model-loading noise."""
    data = tmp_path / "texts.csv"
    data.write_text("text\n" + "".join(f'"{row}"\n' for row in rows), encoding="utf-8")
    code = main(["run", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path / "run"),
                 "--methods", *METHODS, "--checks", *CHECKS])  # fmt: skip
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("attn-probe")]
    return code, lines


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_and_whitespace_texts_are_refused(probe, short_model_dir, tmp_path, capsys, text):
    with pytest.raises(ValueError, match=r"texts \[1\] are empty"):
        probe.explain(["fine", text], methods=METHODS, checks=CHECKS)
    code, lines = run_cli(short_model_dir, tmp_path, ["fine", text], capsys)
    assert code == EXIT_BAD_INPUT and len(lines) == 1
    assert "empty or whitespace only in row 1" in lines[0]


def test_a_very_long_text_is_truncated_with_the_count_of_lost_tokens(probe, short_model_dir, tmp_path, capsys):
    long = "word " * 200
    with pytest.warns(UserWarning, match=r"1 of 2 texts were longer than the model's maximum of 32 tokens .* 170"):
        result = probe.explain(["fine", long], methods=METHODS, checks=CHECKS)
    assert result.examples["truncated"].tolist() == [False, True]
    assert result.examples["n_tokens"].max() == 32
    # in a terminal: one line on stderr (pytest would record the warning, so the command runs in its own process)
    data = tmp_path / "long.csv"
    data.write_text("text\nfine\n" + "word " * 150 + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "attn_probe.cli", "run", "--model", str(short_model_dir), "--data", str(data),
         "--out", str(tmp_path / "long-run"), "--methods", *METHODS, "--checks", *CHECKS],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "attn-probe: warning:" in line]
    assert len(warned) == 1 and warned[0].endswith("were truncated at the end: 120 tokens (up to 120 of one text) "
                                                   "are not explained")  # fmt: skip


@pytest.mark.parametrize("text", ["[CLS] [SEP]", "\x00\x01\x02", "\u200b\u200b"])
def test_texts_of_special_tokens_or_dropped_characters_are_not_assessable(probe, text):
    with pytest.warns(UserWarning, match="no token besides special ones"):
        result = probe.explain(["a fine film", text], methods=METHODS, checks=CHECKS)
    findings = result.findings
    ranked = findings[findings["finding"] == "attention_disagrees"]  # a ranking of content tokens
    assert ranked.loc[ranked["example_id"] == 1, "holds"].isna().all()  # nothing to rank: NA, not False
    assert ranked.loc[ranked["example_id"] == 0, "holds"].notna().any()
    assert result.scores["score"].notna().all()


def test_mixed_scripts_and_emoji_are_explained(probe, short_model_dir, tmp_path, capsys):
    text = "日本語 مرحبا Привет 🎬🍿 café"
    result = probe.explain([text], methods=METHODS, checks=CHECKS)
    assert result.scores["score"].notna().all() and result.findings["holds"].notna().any()
    code, _ = run_cli(short_model_dir, tmp_path, [text], capsys)
    assert code == 0


def test_a_target_out_of_range_names_the_valid_ones(probe):
    with pytest.raises(ValueError, match=r"class index 5 is out of range: .* valid ids are 0\.\.1"):
        probe.explain(["a fine film"], methods=METHODS, checks=CHECKS, target=Target.class_logit(5))


def test_a_model_without_attention_is_refused_with_the_reason(tokenizer, tmp_path, capsys):
    config = tf.MambaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, state_size=4)
    model = tf.MambaForCausalLM(config).eval()
    with pytest.raises(UnsupportedModelError, match="no attention at all"):
        Probe(model, tokenizer)
    model.save_pretrained(tmp_path / "mamba")
    tokenizer.save_pretrained(tmp_path / "mamba")
    code, lines = run_cli(tmp_path / "mamba", tmp_path, ["a fine film"], capsys)
    assert code == EXIT_BAD_INPUT and len(lines) == 1 and "model_type 'mamba'" in lines[0]


def test_something_that_is_not_a_model_is_refused(tokenizer):
    with pytest.raises(ValueError, match=r"Probe needs a torch model \(nn.Module\), got str"):
        Probe("minilm-sentiment", tokenizer)  # the name, where Probe.load was meant
    with pytest.raises(ValueError, match="neither an attn_probe model nor a Hugging Face model"):
        Probe(torch.nn.Linear(2, 2), tokenizer)
