"""NaN or inf in a model's computation is an error that names where it starts, never a silent NaN table."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from attn_probe import Probe
from attn_probe.attention.models import EncoderClassifier, TransformerConfig
from attn_probe.capture import NonFiniteError, capture
from attn_probe.cli import EXIT_BAD_INPUT, main

TEXTS = ["a fine movie", "dull"]


def bert(tokenizer) -> tf.BertForSequenceClassification:
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64,
    )  # fmt: skip
    return tf.BertForSequenceClassification(config).eval()


def test_nan_in_a_layer_is_named_with_the_parameter_that_holds_it(tokenizer):
    model = bert(tokenizer)
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.key.weight[3, 5] = float("nan")
    inputs = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with pytest.raises(NonFiniteError, match="layer 1 of its encoder attention") as error:
        capture(model, inputs)
    assert "every layer before it was finite" in str(error.value)
    assert "'bert.encoder.layer.1.attention.self.key.weight'" in str(error.value)


def test_nan_after_the_last_attention_layer_names_the_logits(tokenizer):
    model = bert(tokenizer)
    with torch.no_grad():
        model.classifier.bias[1] = float("inf")
    with pytest.raises(NonFiniteError, match="output logits hold NaN or infinite") as error:
        capture(model, tokenizer(TEXTS, return_tensors="pt", padding=True))
    assert "'classifier.bias'" in str(error.value)


def test_an_overflow_without_a_bad_parameter_says_so():
    config = TransformerConfig(vocab_size=16, embed_dim=16, num_heads=2, num_layers=2, ffn_dim=32, position="none")
    torch.manual_seed(0)
    model = EncoderClassifier(config).eval()
    with torch.no_grad():  # finite but huge: the first layer's scores overflow float32
        model.encoder.layers[0].attention.q_proj.weight.mul_(1e30)
        model.encoder.layers[0].attention.k_proj.weight.mul_(1e30)
    inputs = {"input_ids": torch.tensor([[1, 5, 6, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with pytest.raises(NonFiniteError, match="layer 0") as error:
        capture(model, inputs)
    assert "No parameter holds NaN / inf" in str(error.value)


def test_padding_and_finite_models_pass(tokenizer, tiny_bert):
    captured = capture(tiny_bert, tokenizer(["a fine movie indeed", "dull"], return_tensors="pt", padding=True))
    assert torch.isfinite(captured.weights).all()


def test_the_probe_and_the_command_line_stop_with_the_layer(tokenizer, tmp_path, capsys):
    model = bert(tokenizer)
    with torch.no_grad():
        model.bert.encoder.layer[2].attention.self.query.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="layer 2"):
        Probe(model, tokenizer).explain(TEXTS, methods=["raw_attention", "saliency"])
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "texts.csv"
    data.write_text("text\na fine movie\ndull\n")
    out = tmp_path / "run"
    code = main(["run", "--model", str(tmp_path / "model"), "--data", str(data), "--out", str(out),
                 "--methods", "raw_attention", "saliency"])  # fmt: skip
    assert code == EXIT_BAD_INPUT
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # progress bars aside
    assert "attn-probe run: error:" in line and "layer 2 of its encoder attention" in line  # after a progress bar
