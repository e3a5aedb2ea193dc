"""Attention-derived methods: each checked against an independent computation, plus the batch contract.

Independent references: hand-made matrices (rollout), the model's own ``output_attentions`` and value
projection (raw attention, attention norm), a forward hook that zeroes a value vector (value zeroing),
gradients recorded through our hook points and finite differences (the gradient hybrids).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attn_probe.attention import DecoderLM, EncoderClassifier, TransformerConfig, record
from attn_probe.capture import capture, tokenize
from attn_probe.methods import ExplainContext, explain, get_method, list_methods
from attn_probe.methods.attention import (
    attention_gradients,
    rollout,
    target_row,
    value_zeroing_distances,
)
from attn_probe.methods.graph import residual_attention
from tests.capture.families import VOCAB, batch, build

METHODS = {
    "raw_attention": "attention",
    "attention_rollout": "attention",
    "attention_norm": "attention",
    "value_zeroing": "attention",
    "attention_grad_rollout": "hybrid",
    "attention_x_gradient": "hybrid",
}
MODELS = ["ours-encoder", "ours-decoder", "bert", "llama"]


def ours_encoder(num_layers: int = 2, num_heads: int = 4) -> EncoderClassifier:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=VOCAB, embed_dim=32, num_heads=num_heads, num_layers=num_layers, ffn_dim=64)
    return EncoderClassifier(config).eval()


def ours_decoder() -> DecoderLM:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=VOCAB, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2, ffn_dim=64, position="rotary",
        norm="rmsnorm", prenorm=True, embedding_norm=False, mlp="swiglu", bias=False, pooler=False,
    )  # fmt: skip
    return DecoderLM(config).eval()


def make_model(name: str) -> torch.nn.Module:
    if name == "ours-encoder":
        return ours_encoder()
    if name == "ours-decoder":
        return ours_decoder()
    return build(name)


def inputs_for(name: str, lengths=(7, 4)) -> dict[str, torch.Tensor]:
    return batch("llama" if name == "ours-decoder" else "bert", lengths=lengths)


def single(inputs: dict[str, torch.Tensor], example: int) -> dict[str, torch.Tensor]:
    length = int(inputs["attention_mask"][example].sum())
    return {key: value[example : example + 1, :length] for key, value in inputs.items()}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: make_model(name) for name in MODELS}


# ----------------------------------------------------------------------------------------------------
# registry and the batch contract, for every method
# ----------------------------------------------------------------------------------------------------
def test_every_method_is_listed_with_its_family():
    table = list_methods().set_index("id")
    for method_id, family in METHODS.items():
        assert table.loc[method_id, "family"] == family
        assert bool(table.loc[method_id, "needs_gradients"]) == (family == "hybrid")
        info, _ = get_method(method_id)
        assert info.reference and info.cost and info.sign


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("method_id", list(METHODS))
def test_padded_batch_equals_single_examples(method_id, model_name, models):
    model, inputs = models[model_name], inputs_for(model_name)
    result = explain(model, inputs, [method_id])[method_id]
    n = inputs["input_ids"].shape[1]
    padding = inputs["attention_mask"] == 0
    assert result.scores.shape == (2, n) and result.scores.dtype == torch.float32
    assert torch.isfinite(result.scores).all()
    assert torch.all(result.scores[padding] == 0)
    assert result.scores.abs().sum() > 0
    layers = 2
    assert result.layer_scores is not None and result.layer_scores.shape == (2, layers, n)
    assert torch.all(result.layer_scores.transpose(1, 2)[padding] == 0)
    if result.head_scores is not None:
        assert result.head_scores.shape == (2, layers, 4, n)
        assert torch.all(result.head_scores.permute(0, 3, 1, 2)[padding] == 0)
    for example in range(2):
        alone = explain(model, single(inputs, example), [method_id])[method_id]
        length = alone.scores.shape[1]
        torch.testing.assert_close(result.scores[example, :length], alone.scores[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(result.layer_scores[example, ..., :length], alone.layer_scores[0], rtol=0, atol=1e-5)
        if result.head_scores is not None:
            torch.testing.assert_close(
                result.head_scores[example, ..., :length], alone.head_scores[0], rtol=0, atol=1e-5
            )


# ----------------------------------------------------------------------------------------------------
# rollout
# ----------------------------------------------------------------------------------------------------
def test_rollout_of_a_hand_made_two_layer_example():
    first = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.0, 0.3, 0.7]])
    second = torch.tensor([[0.2, 0.2, 0.6], [1.0, 0.0, 0.0], [0.3, 0.3, 0.4]])
    joint = rollout(torch.stack([first, second]))  # [2, 3, 3]
    by_hand = torch.tensor(
        [
            [0.2 * 0.5 + 0.2 * 0.1 + 0.6 * 0.0, 0.2 * 0.25 + 0.2 * 0.8 + 0.6 * 0.3, 0.2 * 0.25 + 0.2 * 0.1 + 0.6 * 0.7],
            [0.5, 0.25, 0.25],
            [0.3 * 0.5 + 0.3 * 0.1, 0.3 * 0.25 + 0.3 * 0.8 + 0.4 * 0.3, 0.3 * 0.25 + 0.3 * 0.1 + 0.4 * 0.7],
        ]
    )
    torch.testing.assert_close(joint[0], first)
    torch.testing.assert_close(joint[1], by_hand)
    torch.testing.assert_close(joint.sum(-1), torch.ones(2, 3))


def test_rollout_method_matches_the_residual_graph_by_hand(models):
    model, inputs = models["bert"], inputs_for("bert")
    result = explain(model, inputs, ["attention_rollout"])["attention_rollout"]
    weights = capture(model, inputs).weights  # [b, L, H, n, n]
    for example in range(2):
        length = int(inputs["attention_mask"][example].sum())
        mats = []
        for layer in range(2):
            mixed = 0.5 * weights[example, layer, :, :length, :length].mean(0) + 0.5 * torch.eye(length)
            mats.append(mixed / mixed.sum(-1, keepdim=True))
        by_hand = mats[1] @ mats[0]
        torch.testing.assert_close(result.scores[example, :length], by_hand[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(result.layer_scores[example, 0, :length], mats[0][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_name", ["bert", "ours-decoder"])
def test_rollout_rows_sum_to_one(model_name, models):
    model, inputs = models[model_name], inputs_for(model_name)
    result = explain(model, inputs, ["attention_rollout"], options={"attention_rollout": {"heads": "max"}})
    scores = result["attention_rollout"]
    torch.testing.assert_close(scores.scores.sum(-1), torch.ones(2))
    torch.testing.assert_close(scores.layer_scores.sum(-1), torch.ones(2, 2))
    joint = rollout(residual_attention(capture(model, inputs).weights, inputs["attention_mask"]))
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(joint.sum(-1).transpose(1, 2)[real], torch.ones(int(real.sum()), 2))
    assert torch.all(joint.sum(-1).transpose(1, 2)[~real] == 0)


# ----------------------------------------------------------------------------------------------------
# raw attention
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["ours-encoder", "llama"])
def test_raw_attention_is_the_captured_row(model_name, models):
    model, inputs = models[model_name], inputs_for(model_name)
    context = ExplainContext(model, inputs)
    rows = context.target_rows()
    expected_rows = torch.tensor([6, 3]) if model_name == "llama" else torch.tensor([0, 0])
    assert torch.equal(rows, expected_rows)
    weights = capture(model, inputs).weights  # [b, L, H, n, n]
    _, fn = get_method("raw_attention")
    for example in range(2):
        own = weights[example, :, :, rows[example]]  # [L, H, n]
        torch.testing.assert_close(fn(context).scores[example], own[-1].mean(0))
        torch.testing.assert_close(fn(context, layer=0, head=2).scores[example], own[0, 2])
        torch.testing.assert_close(fn(context, layer=-2, head="max").scores[example], own[0].amax(0))
        torch.testing.assert_close(fn(context).head_scores[example], own)
    with pytest.raises(IndexError, match="layer 2 does not exist"):
        fn(context, layer=2)
    with pytest.raises(ValueError, match="head must be"):
        fn(context, head="median")


# ----------------------------------------------------------------------------------------------------
# attention norm
# ----------------------------------------------------------------------------------------------------
def test_attention_norm_equals_a_hand_computation():
    """From the model's own parts: output_attentions, v_proj on the layer input, a slice of out_proj."""
    model, inputs = ours_encoder(), inputs_for("ours-encoder")
    result = explain(model, inputs, ["attention_norm"], options={"attention_norm": {"layer": 1}})["attention_norm"]
    with torch.no_grad():
        outputs = model(**inputs, output_attentions=True, output_hidden_states=True)
    attention = model.encoder.layers[1].attention  # post-norm: the layer's input is hidden_states[1]
    values = attention.v_proj(outputs.hidden_states[1]).view(2, 7, 4, 8)  # [b, n, H, d]
    transformed = [values[:, :, h] @ attention.out_proj.weight[:, h * 8 : (h + 1) * 8].T for h in range(4)]
    alpha = outputs.attentions[1][:, :, 0]  # [b, H, n]: the [CLS] row
    for h in (0, 3):
        by_hand = alpha[:, h, :, None] * transformed[h]  # [b, n, E]
        torch.testing.assert_close(result.head_scores[:, 1, h], by_hand.norm(dim=-1), rtol=1e-5, atol=1e-6)
    total = sum(alpha[:, h, :, None] * transformed[h] for h in range(4)).norm(dim=-1)  # [b, n]
    torch.testing.assert_close(result.scores, total * inputs["attention_mask"], rtol=1e-5, atol=1e-6)


def test_attention_norm_with_equal_values_is_proportional_to_the_weights():
    """Kobayashi et al.: with the same f(x_j) for every token, ||a_ij f(x_j)|| is a_ij times a constant."""
    model, inputs = ours_encoder(), inputs_for("ours-encoder")
    with torch.no_grad():
        attention = model.encoder.layers[1].attention
        attention.v_proj.weight.zero_()
        attention.v_proj.bias.normal_()
    context = ExplainContext(model, inputs)
    norm = get_method("attention_norm")[1](context)
    raw = get_method("raw_attention")[1](context)
    real = inputs["attention_mask"].bool()
    for example in range(2):
        ratio = norm.head_scores[example, 1][:, real[example]] / raw.head_scores[example, 1][:, real[example]]
        torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=0)
    single_head = ours_encoder(num_heads=1)
    with torch.no_grad():
        single_head.encoder.layers[1].attention.v_proj.weight.zero_()
    context = ExplainContext(single_head, inputs)
    norm = get_method("attention_norm")[1](context).scores
    raw = get_method("raw_attention")[1](context).scores
    torch.testing.assert_close(norm / norm.sum(-1, keepdim=True), raw / raw.sum(-1, keepdim=True))


def test_attention_norm_says_why_when_values_are_missing(models):
    model, inputs = models["bert"], inputs_for("bert")
    context = ExplainContext(model, inputs)
    context._capture = capture(model, inputs, keep_values=False)
    with pytest.raises(ValueError, match="did not provide values"):
        get_method("attention_norm")[1](context)


# ----------------------------------------------------------------------------------------------------
# value zeroing
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["ours-encoder", "bert"])
def test_value_zeroing_equals_zeroing_the_value_projection(model_name, models):
    """Independent route: a forward hook zeroes v_j at the value projection, on the model's own fast path."""
    model, inputs = models[model_name], single(inputs_for(model_name), 0)
    layer, token = 1, 2
    if model_name == "bert":
        stack, projection = "encoder", model.bert.encoder.layer[layer].attention.self.value
    else:
        stack, projection = "encoder", model.encoder.layers[layer].attention.v_proj

    def zero_token(_module, _args, output):
        output = output.clone()
        output[:, token] = 0.0
        return output

    with torch.no_grad():
        original = model(**inputs, output_hidden_states=True).hidden_states[layer + 1][0]  # [n, E]
        handle = projection.register_forward_hook(zero_token)
        try:
            zeroed = model(**inputs, output_hidden_states=True).hidden_states[layer + 1][0]
        finally:
            handle.remove()
    by_hook = 1.0 - F.cosine_similarity(zeroed, original, dim=-1)  # [n]
    distances = value_zeroing_distances(model, inputs, stack, layer)  # [n, n]
    assert by_hook.abs().max() > 1e-4  # the hook did something
    torch.testing.assert_close(distances[:, token], by_hook, rtol=1e-4, atol=1e-6)


def test_value_zeroing_is_the_rollout_of_normalised_distances(models):
    model, inputs = models["ours-decoder"], inputs_for("ours-decoder")
    result = explain(model, inputs, ["value_zeroing"])["value_zeroing"]
    matrices = result.details["matrices"]  # [b, L, n, n]
    real = inputs["attention_mask"].bool()
    row_sums = matrices.sum(-1).transpose(1, 2)  # [b, n, L]
    torch.testing.assert_close(row_sums[real], torch.ones(int(real.sum()), 2))
    assert torch.all(row_sums[~real] == 0) and torch.all(matrices.sum(-2).transpose(1, 2)[~real] == 0)
    future = torch.ones(7, 7, dtype=torch.bool).triu(1)
    assert torch.all(matrices[..., future] == 0)  # causal: zeroing a later token changes nothing, exactly
    context = ExplainContext(model, inputs)
    expected = target_row(rollout(matrices), context.target_rows())  # [b, L, n]
    torch.testing.assert_close(result.layer_scores, expected)
    torch.testing.assert_close(result.scores.sum(-1), torch.ones(2))


# ----------------------------------------------------------------------------------------------------
# gradient hybrids
# ----------------------------------------------------------------------------------------------------
def our_gradients(model: EncoderClassifier, inputs: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Weights and d(target)/d(weights) recorded through our hook points, without the capture machinery."""
    names = [f"encoder.layers.{i}.attention.hook_weights" for i in range(len(model.encoder.layers))]
    with torch.enable_grad(), record(model, names, detach=False) as seen:
        logits = model(**inputs).logits
    target = logits.gather(1, logits.argmax(-1, keepdim=True)).sum()  # default target: the predicted class's logit
    grads = torch.autograd.grad(target, [seen[name] for name in names])
    return [seen[name].detach() for name in names], list(grads)


def test_attention_gradients_match_our_hook_points(models):
    model, inputs = models["ours-encoder"], inputs_for("ours-encoder")
    weights, grads = attention_gradients(ExplainContext(model, inputs))
    own_weights, own_grads = our_gradients(model, inputs)
    for mine, theirs in zip(weights + grads, own_weights + own_grads, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("model_name", ["bert", "llama"])
def test_attention_gradients_are_not_all_zero_on_hugging_face_models(model_name, models):
    weights, grads = attention_gradients(ExplainContext(models[model_name], inputs_for(model_name)))
    assert len(grads) == 2 and all(g.shape == w.shape for w, g in zip(weights, grads, strict=True))
    assert all(g.abs().sum() > 0 for g in grads)


def test_gradients_flow_with_frozen_parameters():
    model, inputs = ours_encoder(), inputs_for("ours-encoder")
    expected = attention_gradients(ExplainContext(model, inputs))[1]
    model.requires_grad_(False)
    frozen = attention_gradients(ExplainContext(model, inputs))[1]
    for a, b in zip(expected, frozen, strict=True):
        torch.testing.assert_close(a, b)


def test_grad_rollout_one_layer_is_the_clamped_mean():
    model, inputs = ours_encoder(num_layers=1), inputs_for("ours-encoder")
    result = explain(model, inputs, ["attention_grad_rollout"])["attention_grad_rollout"]
    (a,), (g,) = our_gradients(model, inputs)
    torch.testing.assert_close(result.scores, (g * a).clamp_min(0).mean(1)[:, 0])


def test_grad_rollout_by_hand_and_its_row_sums():
    """R = (I + Ā_1)(I + Ā_0); scores = row 0 of R - I, summing to r_0 - 1 with r = R 1."""
    model, inputs = ours_encoder(), single(inputs_for("ours-encoder"), 0)
    results = explain(model, inputs, ["attention_grad_rollout"])
    weights, grads = our_gradients(model, inputs)
    bars = [(g * a).clamp_min(0).mean(1)[0] for a, g in zip(weights, grads, strict=True)]  # [n, n] each
    identity = torch.eye(7)
    relevance = (identity + bars[1]) @ (identity + bars[0])
    scores = results["attention_grad_rollout"].scores[0]
    torch.testing.assert_close(scores, (relevance - identity)[0])
    assert torch.all(scores >= 0)
    sums = torch.ones(7)
    for bar in bars:
        sums = sums + bar @ sums
    torch.testing.assert_close(scores.sum(), sums[0] - 1)
    keep = explain(
        model, inputs, ["attention_grad_rollout"], options={"attention_grad_rollout": {"subtract_identity": False}}
    )
    torch.testing.assert_close(keep["attention_grad_rollout"].scores[0], relevance[0])


def test_attention_x_gradient_by_hand_and_by_finite_differences():
    model, inputs = ours_encoder().double(), inputs_for("ours-encoder")
    result = explain(model, inputs, ["attention_x_gradient"])["attention_x_gradient"]
    weights, grads = our_gradients(model, inputs)
    by_hand = sum((g * a)[:, :, 0].sum(1) for a, g in zip(weights, grads, strict=True))  # [b, n]
    torch.testing.assert_close(result.scores, by_hand.float())
    # Scaling the [CLS] row of the last layer by (1 + eps) changes the target by eps * sum_j layer_scores[:, -1, j].
    eps = 1e-4
    targets = []
    for factor in (1 + eps, 1 - eps):

        def scale_row(w, _point, factor=factor):
            w = w.clone()
            w[:, :, 0] = w[:, :, 0] * factor
            return w

        logits = capture(model, inputs, edits={1: scale_row}).logits
        targets.append(logits.gather(1, result.target.ids[:, None]).squeeze(1))
    derivative = (targets[0] - targets[1]) / (2 * eps)
    torch.testing.assert_close(derivative.float(), result.layer_scores[:, -1].sum(-1), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# real models (slow)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-sentiment", "smollm2-135m"])
def test_every_method_runs_on_the_offline_real_models(name):
    from attn_probe.models import load_model

    loaded = load_model(name, device="cpu", progress=False)
    texts = ["a gorgeous, witty movie", "the plot drags on"]
    inputs = tokenize(loaded.tokenizer, texts)
    results = explain(loaded.model, inputs, list(METHODS), tokenizer=loaded.tokenizer)
    layers = loaded.model.config.num_hidden_layers
    heads = loaded.model.config.num_attention_heads
    padding = inputs.attention_mask == 0
    for method_id, result in results.items():
        assert result.scores.shape == inputs.input_ids.shape, method_id
        assert torch.isfinite(result.scores).all(), method_id
        assert torch.all(result.scores[padding] == 0), method_id
        assert result.layer_scores.shape == (2, layers, inputs.seq_len), method_id
        if result.head_scores is not None:
            assert result.head_scores.shape == (2, layers, heads, inputs.seq_len), method_id
    torch.testing.assert_close(results["attention_rollout"].scores.sum(-1), torch.ones(2))
    torch.testing.assert_close(results["value_zeroing"].scores.sum(-1), torch.ones(2))
