"""Capture is exact for every family, whatever backend the model was loaded with, and leaves no trace."""

import pytest
import torch
from torch import nn

from attn_probe.attention import DecoderLM, EncoderClassifier, TransformerConfig, permute_weights, uniform_weights
from attn_probe.capture import capture, intervene
from attn_probe.models.families import UnsupportedModelError
from tests.capture.families import FAMILIES, SEQ2SEQ, batch, build, twin

REFERENCE_FIELDS = {"encoder": "attentions", "decoder": "attentions", "cross": "cross_attentions"}
SEQ2SEQ_FIELDS = {"encoder": "encoder_attentions", "decoder": "decoder_attentions", "cross": "cross_attentions"}


def eager_reference(family, model, inputs, stack):
    """``[batch, layers, heads, q, k]`` from the same weights loaded with eager attention."""
    reference = twin(family, model, "eager")
    with torch.no_grad():
        outputs = reference(**inputs, output_attentions=True)
    fields = SEQ2SEQ_FIELDS if model.config.model_type in SEQ2SEQ else REFERENCE_FIELDS
    attentions = getattr(outputs, fields[stack])
    assert attentions and all(a is not None for a in attentions), "eager reference returned no weights"
    return torch.stack(attentions, dim=1)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


def test_captured_weights_equal_eager_attentions(family):
    model = build(family, "sdpa")
    inputs = batch(family)
    captured = capture(model, inputs)
    expected_stacks = {"encoder", "decoder", "cross"} if family in SEQ2SEQ else {captured.main_stack}
    assert set(captured.stacks) == expected_stacks
    for stack, recorded in captured.stacks.items():
        reference = eager_reference(family, model, inputs, stack)
        assert recorded.weights.shape == reference.shape
        torch.testing.assert_close(recorded.weights, reference, rtol=0, atol=1e-6)
        assert recorded.weights.std() > 0.05  # far from uniform: the comparison can fail
        assert recorded.values is not None and recorded.head_outputs is not None
        assert recorded.output_weight is not None and recorded.output_weight.shape[0] == recorded.num_layers
    assert captured.drift is not None and captured.drift < 1e-4
    assert captured.mechanism == ("native" if family in {"bloom", "deberta-v2"} else "interface")


def test_padding_keys_get_zero_weight_and_a_padded_batch_equals_single_examples(family):
    model = build(family, "sdpa")
    inputs = batch(family, lengths=(7, 4))
    together = capture(model, inputs, measure_drift=False)
    for row, length in enumerate((7, 4)):
        alone_inputs = {
            key: value[row : row + 1, : length if key != "decoder_input_ids" else None] for key, value in inputs.items()
        }
        alone = capture(model, alone_inputs, measure_drift=False)
        for stack, recorded in together.stacks.items():
            weights = recorded.weights[row]  # [layers, heads, q, k]
            # Real queries give padded keys nothing (what padded query rows do varies by family). The
            # seq2seq decoder's own inputs are unpadded here; its cross-attention reads the padded encoder.
            if stack == "cross":
                assert torch.all(weights[..., length:] == 0)
            elif not (stack == "decoder" and family in SEQ2SEQ):
                assert torch.all(weights[..., :length, length:] == 0)
            # Which queries and keys of the padded batch correspond to the example alone.
            queries = slice(None) if family in SEQ2SEQ and stack != "encoder" else slice(0, length)
            keys = slice(None) if family in SEQ2SEQ and stack == "decoder" else slice(0, length)
            torch.testing.assert_close(weights[..., queries, keys], alone.stacks[stack].weights[0], rtol=0, atol=1e-5)
        logits_together, logits_alone = together.logits[row], alone.logits[0]
        if logits_together.dim() == 2 and family not in SEQ2SEQ:  # LM logits: [n, vocab], real positions only
            logits_together = logits_together[:length]
        torch.testing.assert_close(logits_together, logits_alone, rtol=0, atol=1e-5)


def forward_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_the_model_is_left_as_it_was_found(family):
    model = build(family, "sdpa")
    inputs = batch(family)
    backends = [
        m.config._attn_implementation
        for m in model.modules()
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    ]
    hooks_before = forward_hook_count(model)
    with torch.no_grad():
        before = model(**inputs).logits
    capture(model, inputs)
    with pytest.raises(RuntimeError, match="edit exploded"), intervene(model, {0: _exploding_edit}):
        model(**inputs)
    with torch.no_grad():
        after = model(**inputs).logits
    assert torch.equal(before, after)
    assert forward_hook_count(model) == hooks_before
    assert backends == [
        m.config._attn_implementation
        for m in model.modules()
        if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    ]


def _exploding_edit(weights, _point):
    raise RuntimeError("edit exploded")


def test_edits_change_the_weights_used_and_only_inside_the_block(family):
    model = build(family, "sdpa")
    inputs = batch(family)
    original = capture(model, inputs, measure_drift=False)
    edited = capture(model, inputs, edits={1: uniform_weights(head=[0, 2])})
    layer = edited.weights[:, 1]  # [batch, heads, q, k]
    support = original.weights[:, 1] > 0
    expected = support / support.sum(-1, keepdim=True)
    torch.testing.assert_close(layer[:, [0, 2]], expected[:, [0, 2]].to(layer.dtype))
    torch.testing.assert_close(layer[:, [1, 3]], original.weights[:, 1, [1, 3]])
    assert not torch.allclose(edited.logits, original.logits, atol=1e-6)
    with torch.no_grad(), intervene(model, {(original.main_stack, 0): permute_weights(seed=0)}):
        permuted = model(**inputs).logits
    assert not torch.allclose(permuted, original.logits, atol=1e-6)
    torch.testing.assert_close(capture(model, inputs, measure_drift=False).logits, original.logits)


def test_an_edit_of_a_layer_that_does_not_exist_is_an_error():
    model = build("bert")
    with pytest.raises(ValueError, match="never applied"):
        capture(model, batch("bert"), edits={7: uniform_weights()})


@pytest.mark.parametrize("family_name", ["llama", "gpt2", "bloom", "t5"])
def test_head_outputs_are_what_the_output_projection_receives(family_name):
    """weights @ values, merged over heads, is the very input of W_O: the values are the real ones."""
    model = build(family_name)
    inputs = batch(family_name)
    captured = capture(model, inputs, measure_drift=False)
    stack = captured.stacks[captured.main_stack]
    projection_inputs = []
    first_site = model.get_submodule(stack.site_names[0])
    projection = next(
        getattr(first_site, name) for name in ("o_proj", "c_proj", "dense", "o") if hasattr(first_site, name)
    )
    handle = projection.register_forward_pre_hook(lambda _m, args: projection_inputs.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    head_outputs = stack.head_outputs[:, 0]  # [batch, heads, q, d]
    merged = head_outputs.transpose(1, 2).flatten(2)  # [batch, q, heads * d]
    torch.testing.assert_close(merged, projection_inputs[0], rtol=0, atol=1e-6)


def test_t5_relative_bias_is_recorded_apart_and_shared_by_the_layers():
    captured = capture(build("t5"), batch("t5"), measure_drift=False)
    bias = captured.stacks["encoder"].position_bias  # [batch or 1, layers, heads, q, k]
    assert bias is not None
    torch.testing.assert_close(bias[:, 0], bias[:, 1])  # T5 computes it once, in the first layer


@pytest.mark.parametrize("model_class", [EncoderClassifier, DecoderLM])
def test_our_own_models_are_a_family_like_the_others(model_class):
    torch.manual_seed(0)
    model = model_class(
        TransformerConfig(vocab_size=50, embed_dim=32, num_heads=4, num_layers=3, position="alibi")
    ).eval()
    inputs = {"input_ids": torch.randint(3, 50, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    captured = capture(model, inputs)
    with torch.no_grad():
        reference = model(**inputs, output_attentions=True).attentions
    torch.testing.assert_close(captured.weights, torch.stack(reference, dim=1), rtol=0, atol=1e-6)
    assert captured.mechanism == "ours" and captured.drift < 1e-5
    assert captured.stacks[captured.main_stack].position_bias is not None  # ALiBi's term, recorded apart
    edited = capture(model, inputs, edits={2: uniform_weights()})
    assert not torch.allclose(edited.logits, captured.logits)


def test_gradients_flow_through_captured_weights_when_asked():
    model = build("bert")
    captured = capture(model, batch("bert"), grad=True, measure_drift=False)
    assert captured.weights.requires_grad
    layer_weights = captured.stacks["encoder"].layer_weights
    assert len(layer_weights) == 2
    gradients = torch.autograd.grad(captured.logits[:, 0].sum(), layer_weights, retain_graph=True)
    assert all(g.shape == w.shape and g.abs().sum() > 0 for g, w in zip(gradients, layer_weights, strict=True))
    captured.logits[:, 0].sum().backward()
    assert any(p.grad is not None for p in model.parameters())
    assert capture(model, batch("bert"), measure_drift=False).stacks["encoder"].layer_weights is None


def test_unsupported_models_are_explained():
    with pytest.raises(UnsupportedModelError, match="neither an attn_probe model nor a Hugging Face model"):
        capture(nn.Linear(3, 3), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})

    class Mystery(nn.Module):
        config = type("Config", (), {"model_type": "mystery"})()

    with pytest.raises(UnsupportedModelError, match=r"AttentionInterface.*NATIVE"):
        capture(Mystery(), {"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(TypeError, match="mapping like a tokenizer"):
        capture(build("bert"), [[1, 2, 3]])
