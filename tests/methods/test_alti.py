"""ALTI: the decomposition adds up to the model's own states, known answers by hand, and the batch contract.

Independent references: each layer's state after the attention block read from the model itself (our hook
points; Hugging Face ``output_hidden_states`` plus a hook on the attention module, or BERT's attention module
output), worked examples computed by hand, and ``F.layer_norm`` for the linearised norm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attn_probe
from attn_probe.attention import EncoderClassifier, TransformerConfig, record
from attn_probe.methods import ExplainContext, explain, list_methods
from attn_probe.methods.alti import (
    NormSpec,
    alti,
    alti_contributions,
    alti_terms,
    decomposition,
    transformed_values,
)
from attn_probe.methods.attention import target_row
from tests.capture.families import batch, build
from tests.methods.models import MODELS, assert_padded_batch_equals_single_examples


# ----------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------
def test_alti_is_registered_and_listed():
    row = list_methods().set_index("id").loc["alti"]
    assert row["family"] == "attention" and not row["needs_gradients"]
    assert "Ferrando" in row["reference"] and "non-negative share" in row["sign"]
    assert "alti" in set(attn_probe.list_methods()["id"])


# ----------------------------------------------------------------------------------------------------
# pure functions: known answers
# ----------------------------------------------------------------------------------------------------
def test_worked_example_by_hand():
    """Pre-norm, 2 tokens, one head, W_O = I; both queries attend to token 1 only.

    Row 0: T(x_0) = x_0 = (1, 0), T(x_1) = v_1 = (0, 2), y = (1, 2), ||y|| = 3; distances 2 and 1, so
    c = (1, 2) / 3. Row 1: T(x_0) = 0, T(x_1) = x_1 + v_1 = (0, 3): c = (0, 3) / 3.
    """
    resid = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    weights = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # [H=1, 2, 2]
    values = torch.tensor([[[5.0, 5.0], [0.0, 2.0]]])  # [H=1, 2, d=2]
    transformed = transformed_values(values, torch.eye(2))
    terms = alti_terms(resid, weights, transformed)
    torch.testing.assert_close(terms.sum(1), torch.tensor([[1.0, 2.0], [0.0, 3.0]]))
    expected = torch.tensor([[1 / 3, 2 / 3], [0.0, 1.0]])
    torch.testing.assert_close(alti_contributions(terms), expected)
    # The output bias belongs to the query: b_O = (0, 3) makes row 0's own term (1, 3), y = (1, 5):
    # distances 2 and 4 from ||y|| = 6 give c = (4, 2) / 6.
    biased = alti_contributions(alti_terms(resid, weights, transformed, output_bias=torch.tensor([0.0, 3.0])))
    torch.testing.assert_close(biased[0], torch.tensor([2 / 3, 1 / 3]))


def test_one_hot_attention_without_a_value_path_keeps_every_token_to_itself():
    """W_V W_O = 0: whatever the attention (here one-hot, to the next token), only the residual is left."""
    torch.manual_seed(0)
    n, embed, heads, head_dim = 5, 8, 2, 4
    resid = torch.randn(n, embed)
    weights = F.one_hot((torch.arange(n) + 1) % n, n).float().expand(heads, n, n)  # [H, n, n]
    transformed = transformed_values(torch.randn(heads, n, head_dim), torch.zeros(embed, heads * head_dim))
    norm = NormSpec("layernorm", torch.rand(embed) + 0.5, torch.randn(embed), 1e-12)
    for spec in (None, norm):
        contributions = alti_contributions(alti_terms(resid, weights, transformed, torch.randn(embed), spec))
        torch.testing.assert_close(contributions, torch.eye(n))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_the_linearised_norm_adds_up_to_the_norm(kind):
    torch.manual_seed(0)
    n, embed, heads, head_dim = 4, 6, 2, 3
    resid, weights = torch.randn(n, embed), torch.softmax(torch.randn(heads, n, n), dim=-1)
    transformed = transformed_values(torch.randn(heads, n, head_dim), torch.randn(embed, heads * head_dim))
    gamma, beta, bias = torch.rand(embed) + 0.5, torch.randn(embed), torch.randn(embed)
    norm = NormSpec(kind, gamma, beta if kind == "layernorm" else None, 1e-5)
    terms = alti_terms(resid, weights, transformed, bias, norm)  # [n, n, E]
    before = resid + bias + torch.einsum("hqk,hke->qe", weights, transformed)
    if kind == "layernorm":
        expected = F.layer_norm(before, (embed,), gamma, beta, eps=1e-5)
    else:
        expected = before * (before.pow(2).mean(-1, keepdim=True) + 1e-5).rsqrt() * gamma
    torch.testing.assert_close(terms.sum(1), expected, rtol=0, atol=1e-5)
    # every term centred (LayerNorm) and scaled by the std of the whole sum: beta only on the diagonal
    off_diagonal = terms[~torch.eye(n, dtype=torch.bool)]
    if kind == "layernorm":
        torch.testing.assert_close((off_diagonal / gamma).mean(-1), torch.zeros(n * (n - 1)), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# the decomposition against the models' own states
# ----------------------------------------------------------------------------------------------------
def _states_after_attention(name: str, model: torch.nn.Module, inputs: dict) -> list[torch.Tensor]:
    """Each layer's ``[b, n, E]`` state after the attention block, as the model computes it (plain forward)."""
    if name.startswith("our-"):
        stack = "encoder" if name == "our-encoder" else "decoder"
        names = [f"{stack}.layers.{layer}.hook_resid_mid" for layer in range(model.config.num_layers)]
        with torch.no_grad(), record(model, names) as cache:
            model(**inputs)
        return [cache[point] for point in names]
    if name == "hf-bert":  # post-norm: BertAttention returns LN(x + attn(x))
        modules = [layer.attention for layer in model.bert.encoder.layer]
    else:  # pre-norm: x (the layer's input) + the attention module's output
        modules = [layer.self_attn for layer in model.model.layers]
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out[0])) for m in modules]
    try:
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    if name == "hf-bert":
        return outputs
    return [hidden[layer] + outputs[layer] for layer in range(len(modules))]


@pytest.mark.parametrize("name", list(MODELS))
def test_the_terms_add_up_to_the_models_own_state_after_attention(name):
    model, inputs = MODELS[name]()
    ctx = ExplainContext(model, inputs)
    states = _states_after_attention(name, model, inputs)
    for layer, state in enumerate(states):
        for example in range(inputs["input_ids"].shape[0]):
            terms, columns = decomposition(ctx, layer, example)  # [m, m, E]
            torch.testing.assert_close(terms.sum(1), state[example, columns], rtol=0, atol=1e-5)
            if name in ("hf-llama", "our-decoder"):  # causal: nothing from the future
                assert torch.all(terms.abs().sum(-1).triu(1) == 0)


@pytest.mark.parametrize("name", list(MODELS))
def test_contribution_rows_are_shares_and_the_rollout_is_their_product(name):
    model, inputs = MODELS[name]()
    result = explain(model, inputs, ["alti"])["alti"]
    matrices, mask = result.details["matrices"], inputs["attention_mask"].bool()  # [b, L, n, n]
    assert torch.all(matrices >= 0)
    real_rows = mask[:, None, :].expand(matrices.shape[:3])  # [b, L, n]
    torch.testing.assert_close(matrices.sum(-1)[real_rows], torch.ones(int(real_rows.sum())))
    padding = ~(mask[:, :, None] & mask[:, None, :])[:, None].expand_as(matrices)
    assert torch.all(matrices[padding] == 0)
    assert float(result.details["reconstruction_error"].max()) < 1e-5
    assert result.details["prenorm"] == (name in ("hf-llama", "our-decoder"))
    rows = torch.zeros(mask.shape[0], dtype=torch.long) if name in ("hf-bert", "our-encoder") else mask.sum(1) - 1
    joint = matrices[:, 1] @ matrices[:, 0]  # [b, n, n]
    torch.testing.assert_close(result.layer_scores[:, 0], target_row(matrices[:, 0], rows))
    torch.testing.assert_close(result.scores, target_row(joint, rows))
    torch.testing.assert_close(result.scores.sum(-1), torch.ones(mask.shape[0]))


@pytest.mark.parametrize("name", list(MODELS))
def test_a_padded_batch_gives_what_its_examples_give_alone(name):
    assert_padded_batch_equals_single_examples(alti, name)


@pytest.mark.parametrize("family", ["roberta", "electra", "gpt2", "qwen2", "mistral"])
def test_the_other_known_layouts_add_up(family):
    result = alti(ExplainContext(build(family), batch(family)))
    assert float(result.details["reconstruction_error"].max()) < 1e-5
    torch.testing.assert_close(result.scores.sum(-1), torch.ones(2))


def test_a_model_without_a_value_path_explains_the_target_by_itself():
    torch.manual_seed(0)
    model = EncoderClassifier(TransformerConfig(vocab_size=100, embed_dim=32, num_heads=4, num_layers=1)).eval()
    with torch.no_grad():
        model.encoder.layers[0].attention.out_proj.weight.zero_()
    inputs = batch("bert")
    result = explain(model, inputs, ["alti"])["alti"]
    mask = inputs["attention_mask"].bool()
    identity = torch.diag_embed(mask.float())  # [b, n, n]
    torch.testing.assert_close(result.details["matrices"][:, 0], identity)
    torch.testing.assert_close(result.scores, identity[:, 0])


# ----------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------
def test_unknown_layouts_and_undecomposable_layers_are_refused():
    with pytest.raises(ValueError, match=r"'distilbert'.*value_zeroing"):
        alti(ExplainContext(build("distilbert"), batch("distilbert")))
    torch.manual_seed(0)
    shaw = EncoderClassifier(TransformerConfig(vocab_size=100, embed_dim=32, num_heads=4, position="shaw")).eval()
    with pytest.raises(ValueError, match=r"shaw.*value term"):
        alti(ExplainContext(shaw, batch("bert")))
    torch.manual_seed(0)
    dropout = EncoderClassifier(TransformerConfig(vocab_size=100, embed_dim=32, num_heads=4, dropout=0.5)).train()
    with pytest.raises(ValueError, match=r"does not add up.*training"):
        alti(ExplainContext(dropout, batch("bert")))


# ----------------------------------------------------------------------------------------------------
# a real model (slow)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_alti_on_minilm_sentiment():
    from attn_probe.capture import tokenize
    from attn_probe.models import load_model

    loaded = load_model("minilm-sentiment", device="cpu", progress=False)
    inputs = tokenize(loaded.tokenizer, ["a gorgeous, witty movie", "the plot drags on"])
    result = explain(loaded.model, inputs, ["alti"], tokenizer=loaded.tokenizer)["alti"]
    layers = loaded.model.config.num_hidden_layers
    assert result.layer_scores.shape == (2, layers, inputs.seq_len)
    assert float(result.details["reconstruction_error"].max()) < 1e-4
    torch.testing.assert_close(result.scores.sum(-1), torch.ones(2))
    assert torch.all(result.scores[inputs.attention_mask == 0] == 0)
    alone = explain(loaded.model, tokenize(loaded.tokenizer, ["the plot drags on"]), ["alti"])["alti"]
    real = inputs.attention_mask[1].bool()
    torch.testing.assert_close(result.scores[1, real], alone.scores[0], rtol=0, atol=1e-5)
