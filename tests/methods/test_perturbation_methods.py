"""Perturbation methods in token-id space: occlusion and deletion equal doing it by hand; Kernel SHAP."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from attn_probe.attention import EncoderClassifier, TransformerConfig
from attn_probe.capture import Target, resolve, target_value, tokenize
from attn_probe.methods import ExplainContext, get_method, list_methods
from attn_probe.methods.perturbation import kernel_shap, leave_one_out, leave_one_out_drop
from tests.capture.families import batch, build
from tests.methods.models import (
    MODELS,
    TEXTS,
    assert_padded_batch_equals_single_examples,
    assert_tokenized_batch_equals_single_texts,
)

PERTURBATION_METHODS = {
    "leave_one_out": leave_one_out,
    "leave_one_out_drop": leave_one_out_drop,
    "kernel_shap": kernel_shap,
}


def value_of(ctx: ExplainContext, i: int, ids: list[int], position: int | None = None) -> float:
    """The target of example ``i`` on the unpadded sequence ``ids`` (read at ``position`` for an LM)."""
    resolved = ctx.target.take([i])
    if resolved.positions is not None:
        where = len(ids) - 1 if position is None else position
        resolved = replace(resolved, positions=torch.tensor([where]), max_position=where)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        logits = ctx.logits(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return float(target_value(resolved, logits)[0])


def replaceable(ctx: ExplainContext, i: int) -> list[int]:
    """Padded columns of example ``i`` that perturbations touch."""
    columns = torch.nonzero(ctx.attention_mask[i]).flatten().tolist()
    keep = ctx.special[i]
    out = [c for c in columns if not keep[c]]
    return out[1:] if ctx.is_language_model and out and out[0] == columns[0] else out


# ----------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------
def test_perturbation_methods_are_listed_with_their_family():
    table = list_methods().set_index("id")
    for method_id, fn in PERTURBATION_METHODS.items():
        assert table.loc[method_id, "family"] == "perturbation"
        assert not bool(table.loc[method_id, "needs_gradients"])
        assert table.loc[method_id, "sign"].startswith("signed")
        assert get_method(method_id)[1] is fn


# ----------------------------------------------------------------------------------------------------
# occlusion and deletion by hand
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_leave_one_out_equals_manual_erasure(name):
    model, inputs = MODELS[name]()
    ctx = ExplainContext(model, inputs)
    result = leave_one_out(ctx)
    replacement = ctx.replacement_id()
    for i in range(2):
        columns = torch.nonzero(inputs["attention_mask"][i]).flatten().tolist()
        ids = inputs["input_ids"][i, columns].tolist()
        position = None
        original = value_of(ctx, i, ids, position)
        movable = replaceable(ctx, i)
        for column in columns:
            if column not in movable:
                assert result.scores[i, column] == 0
                continue
            erased = list(ids)
            erased[columns.index(column)] = replacement
            expected = original - value_of(ctx, i, erased, position)
            assert float(result.scores[i, column]) == pytest.approx(expected, abs=1e-5)
    if ctx.is_language_model:
        assert torch.all(result.scores[:, 0] == 0)  # the first token conditions every prediction: kept


@pytest.mark.parametrize("name", list(MODELS))
def test_drop_equals_manual_deletion(name):
    model, inputs = MODELS[name]()
    ctx = ExplainContext(model, inputs)
    result = leave_one_out_drop(ctx, batch_size=3)  # several passes
    for i in range(2):
        columns = torch.nonzero(inputs["attention_mask"][i]).flatten().tolist()
        ids = inputs["input_ids"][i, columns].tolist()
        original = value_of(ctx, i, ids)
        for column in replaceable(ctx, i):
            shorter = ids[: columns.index(column)] + ids[columns.index(column) + 1 :]
            expected = original - value_of(ctx, i, shorter)  # an LM: still read at the last real token
            assert float(result.scores[i, column]) == pytest.approx(expected, abs=1e-5)
    assert result.details["variants"].tolist() == [len(replaceable(ctx, i)) for i in range(2)]


def test_drop_reads_a_fixed_language_model_position_at_the_same_token():
    """A target at real token 3: deleting an earlier token moves it one column left; deleting token 3
    itself reads the prediction at the token before it."""
    model, inputs = build("llama"), batch("llama")
    with torch.no_grad():
        logits = model(**inputs).logits
    ctx = ExplainContext(model, inputs, target=resolve(Target.next_token(position=3), logits, inputs["attention_mask"]))
    result = leave_one_out_drop(ctx)
    for i in range(2):
        columns = torch.nonzero(inputs["attention_mask"][i]).flatten().tolist()
        ids = inputs["input_ids"][i, columns].tolist()
        original = value_of(ctx, i, ids, position=3)
        for j in range(1, len(ids)):
            shorter = ids[:j] + ids[j + 1 :]
            expected = original - value_of(ctx, i, shorter, position=3 - (j <= 3))
            assert float(result.scores[i, columns[j]]) == pytest.approx(expected, abs=1e-5)


def test_erasure_with_special_tokens_and_mask_replacement(tiny_bert, tokenizer):
    inputs = tokenize(tokenizer, TEXTS)
    ctx = ExplainContext(tiny_bert, inputs, tokenizer=tokenizer)
    assert ctx.replacement_id() == tokenizer.mask_token_id
    for fn in (leave_one_out, leave_one_out_drop):
        result = fn(ctx)
        assert torch.all(result.scores[ctx.special] == 0)  # [CLS], [SEP] and padding are not perturbed
        assert torch.all(result.scores[~ctx.special] != 0)
    ids = inputs.input_ids[0].tolist()
    erased = [ids[0], tokenizer.mask_token_id, *ids[2:]]
    expected = value_of(ctx, 0, ids) - value_of(ctx, 0, erased)
    assert float(leave_one_out(ctx).scores[0, 1]) == pytest.approx(expected, abs=1e-5)


def test_each_example_keeps_its_own_target_row_through_captum_expansion():
    """captum repeats the whole batch for several ablations per pass; each row keeps its own class."""
    model, inputs = build("bert"), batch("bert", lengths=(7, 4, 6))
    with torch.no_grad():
        logits = model(**inputs).logits
    resolved = resolve(Target.class_logit(), logits)
    ids = torch.tensor([0, 1, 0])
    ctx = ExplainContext(model, inputs, target=replace(resolved, ids=ids, values=logits[torch.arange(3), ids]))
    one = leave_one_out(ctx, perturbations_per_eval=1)
    many = leave_one_out(ctx, perturbations_per_eval=4)
    assert many.details["perturbations_per_eval"] == 4
    torch.testing.assert_close(one.scores, many.scores, rtol=0, atol=1e-5)
    columns = torch.nonzero(inputs["attention_mask"][1]).flatten().tolist()
    row = inputs["input_ids"][1, columns].tolist()
    erased = [ctx.replacement_id(), *row[1:]]
    assert float(many.scores[1, 0]) == pytest.approx(value_of(ctx, 1, row) - value_of(ctx, 1, erased), abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# Kernel SHAP
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hf-bert", "our-decoder"])
def test_kernel_shap_sums_to_the_all_replaced_difference(name):
    model, inputs = MODELS[name]()
    ctx = ExplainContext(model, inputs)
    result = kernel_shap(ctx, n_samples=64)
    for i in range(2):
        columns = torch.nonzero(inputs["attention_mask"][i]).flatten().tolist()
        ids = inputs["input_ids"][i, columns].tolist()
        movable = replaceable(ctx, i)
        replaced = [ctx.replacement_id() if c in movable else t for c, t in zip(columns, ids, strict=True)]
        expected = value_of(ctx, i, ids) - value_of(ctx, i, replaced)
        assert float(result.scores[i].sum()) == pytest.approx(expected, rel=1e-3, abs=1e-4)
        assert all(result.scores[i, c] == 0 for c in range(inputs["input_ids"].shape[1]) if c not in movable)


def test_kernel_shap_is_exact_for_an_additive_model():
    """A model whose target is a sum over tokens of a per-token value: Shapley values are the differences."""

    class Additive(EncoderClassifier):
        def forward(self, input_ids, attention_mask=None, **_):
            embedded = self.encoder.embed.tokens(input_ids)[..., :2]  # [batch, n, 2]
            return (embedded * attention_mask[..., None]).sum(dim=1)[None]  # logits [batch, 2] as outputs[0]

    torch.manual_seed(0)
    model = Additive(TransformerConfig(vocab_size=100, embed_dim=8, num_heads=2, num_layers=1, ffn_dim=8)).eval()
    inputs = batch("bert", lengths=(6, 3))
    ctx = ExplainContext(model, inputs, target=resolve(Target.class_logit(1), model(**inputs)[0]))
    result = kernel_shap(ctx, n_samples=100)
    weights = model.encoder.embed.tokens.weight[:, 1].detach()
    expected = (weights[inputs["input_ids"]] - weights[ctx.replacement_id()]) * inputs["attention_mask"]
    torch.testing.assert_close(result.scores, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(leave_one_out(ctx).scores, expected, rtol=1e-4, atol=1e-5)


def test_kernel_shap_is_seeded_and_leaves_global_generators_alone():
    model, inputs = build("bert"), batch("bert")
    ctx = ExplainContext(model, inputs)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = kernel_shap(ctx, n_samples=32)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert all(np.array_equal(a, b) for a, b in zip(numpy_state, np.random.get_state(), strict=True))
    assert torch.equal(first.scores, kernel_shap(ctx, n_samples=32).scores)
    assert not torch.equal(first.scores, kernel_shap(ctx, n_samples=32, seed=1).scores)
    torch.testing.assert_close(first.scores, kernel_shap(ctx, n_samples=32, perturbations_per_eval=5).scores)


# ----------------------------------------------------------------------------------------------------
# batches equal single examples
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method_id", list(PERTURBATION_METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_padded_batch_equals_single_examples(method_id, name):
    assert_padded_batch_equals_single_examples(
        PERTURBATION_METHODS[method_id], name, **({"n_samples": 32} if method_id == "kernel_shap" else {})
    )


def test_padded_batch_equals_single_examples_with_special_tokens(tiny_bert, tokenizer):
    assert_tokenized_batch_equals_single_texts(PERTURBATION_METHODS, tiny_bert, tokenizer)


def test_memory_budget_sets_the_batching():
    model, inputs = build("llama"), batch("llama")
    ctx = ExplainContext(model, inputs)
    free = leave_one_out(ctx)
    assert free.details["perturbations_per_eval"] == 6 + 1  # every feature in one pass (+ the no-op one)
    tight = leave_one_out(ctx, memory_budget_bytes=1)
    assert tight.details["perturbations_per_eval"] == 1
    torch.testing.assert_close(tight.scores, free.scores, rtol=0, atol=1e-5)
    drop = leave_one_out_drop(ctx, memory_budget_bytes=1)
    assert drop.details["batch_size"] == 1
    torch.testing.assert_close(drop.scores, leave_one_out_drop(ctx).scores, rtol=0, atol=1e-5)


def test_an_example_without_replaceable_tokens_scores_zero(tiny_bert, tokenizer):
    with pytest.warns(UserWarning, match="no token besides special ones"):  # said, not silent
        inputs = tokenize(tokenizer, ["", "dull"])  # [CLS] [SEP] only
    ctx = ExplainContext(tiny_bert, inputs, tokenizer=tokenizer)
    for fn in PERTURBATION_METHODS.values():
        result = fn(ctx)
        assert torch.all(result.scores[0] == 0) and result.scores[1, 1] != 0


# ----------------------------------------------------------------------------------------------------
# real models (slow)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-sentiment", "smollm2-135m"])
def test_perturbation_methods_on_the_offline_real_models(name):
    from attn_probe.models import load_model

    loaded = load_model(name, device="cpu", progress=False)
    inputs = tokenize(loaded.tokenizer, ["a gorgeous, witty movie", "the plot drags on"])
    ctx = ExplainContext(loaded.model, inputs, tokenizer=loaded.tokenizer)
    padding = inputs.attention_mask == 0
    for method_id, fn in PERTURBATION_METHODS.items():
        options = {"n_samples": 64} if method_id == "kernel_shap" else {}
        result = fn(ctx, **options)
        assert result.scores.shape == inputs.input_ids.shape, method_id
        assert torch.isfinite(result.scores).all(), method_id
        assert torch.all(result.scores[padding | ctx.special] == 0), method_id
        assert result.scores.abs().sum() > 0, method_id


def test_seq2seq_decoder_inputs_are_not_moved_with_the_encoder_columns():
    """A T5 batch whose decoder inputs are as long as the encoder's: deleting an encoder token must leave the
    decoder inputs alone, and the encoder's first token is erasable (it is not a prompt's start)."""
    model, inputs = build("t5"), batch("t5", lengths=(6, 4))
    inputs["decoder_input_ids"] = torch.randint(4, 50, (2, 6), generator=torch.Generator().manual_seed(3))
    ctx = ExplainContext(model, inputs)
    result = leave_one_out_drop(ctx)

    def value(encoder_ids: list[int], i: int) -> float:
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([encoder_ids]), decoder_input_ids=inputs["decoder_input_ids"][i : i + 1]
            ).logits
        return float(target_value(ctx.target.take([i]), logits)[0])

    for i in range(2):
        ids = inputs["input_ids"][i, inputs["attention_mask"][i].bool()].tolist()
        for j in range(len(ids)):
            expected = value(ids, i) - value(ids[:j] + ids[j + 1 :], i)
            assert float(result.scores[i, j]) == pytest.approx(expected, abs=1e-5)
