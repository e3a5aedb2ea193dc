"""Every registered method keeps the one contract: shape, padding, finiteness, metadata, shared work."""

import pytest
import torch
import transformers as tf

import attn_probe
from attn_probe.attention import EncoderClassifier, TransformerConfig
from attn_probe.capture import tokenize
from attn_probe.methods import METHOD_FAMILIES, ExplainContext, explain, get_method, list_methods

TEXTS = ["a gorgeous, witty movie", "dull", "the plot drags on and on"]


def test_list_methods_describes_every_method():
    table = list_methods()
    assert list(table.columns) == ["id", "family", "needs_gradients", "cost", "sign", "description", "reference"]
    assert set(table["family"]) <= set(METHOD_FAMILIES)
    assert table["id"].is_unique and all(i.isidentifier() and i == i.lower() for i in table["id"])
    assert attn_probe.list_methods().equals(table)
    expected = {"raw_attention", "attention_rollout", "attention_flow", "integrated_gradients", "leave_one_out"}
    assert expected <= set(table["id"])


@pytest.mark.parametrize("method_id", list(list_methods()["id"]))
def test_every_method_keeps_the_contract(method_id, tiny_bert, tokenizer):
    batch = tokenize(tokenizer, TEXTS)
    result = explain(tiny_bert, batch, [method_id], tokenizer=tokenizer)[method_id]
    info, _ = get_method(method_id)
    assert result.method == method_id and result.info == info
    assert result.scores.shape == batch.input_ids.shape and result.scores.dtype == torch.float32
    assert torch.isfinite(result.scores).all()
    padding = batch.attention_mask == 0
    assert torch.all(result.scores[padding] == 0)
    assert result.scores[~padding].abs().sum() > 0  # it says something
    frame = result.to_frame(batch)
    assert len(frame) == int(batch.attention_mask.sum())
    assert list(frame["token"]) == [token for tokens in batch.tokens for token in tokens]
    if result.layer_scores is not None:
        assert result.layer_scores.shape[0] == len(TEXTS) and result.layer_scores.shape[-1] == batch.seq_len


def test_attention_methods_share_one_capture(tiny_bert, tokenizer):
    """A second explanation over the same input does not redo the forward passes of the first."""
    batch = tokenize(tokenizer, TEXTS)
    calls = []
    handle = tiny_bert.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        explain(tiny_bert, batch, ["raw_attention"], tokenizer=tokenizer)
        one = len(calls)
        calls.clear()
        explain(tiny_bert, batch, ["raw_attention", "attention_rollout", "attention_norm"], tokenizer=tokenizer)
        assert len(calls) == one
    finally:
        handle.remove()


def test_our_own_models_are_explained_like_hugging_face_ones():
    torch.manual_seed(0)
    model = EncoderClassifier(TransformerConfig(vocab_size=30, embed_dim=32, num_heads=4, num_layers=2)).eval()
    inputs = {"input_ids": torch.randint(3, 30, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    results = explain(model, inputs, ["raw_attention", "attention_rollout", "integrated_gradients", "leave_one_out"])
    for result in results.values():
        assert result.scores.shape == (2, 6) and torch.all(result.scores[1, 4:] == 0)


def test_unknown_methods_and_headless_models_are_explained(tiny_bert, tokenizer):
    with pytest.raises(KeyError, match=r"the methods are: .*attention_rollout"):
        explain(tiny_bert, tokenize(tokenizer, TEXTS), ["attention_rolout"])
    headless = tf.BertModel(tiny_bert.config).eval()
    with pytest.raises(ValueError, match="no head to explain"):
        ExplainContext(headless, tokenize(tokenizer, TEXTS))
