"""Model-parameter randomisation: the user's model untouched, architecture-only explanations stay while
gradients move, layers found in Hugging Face and our models, re-initialisation rules, seeds, errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from attn_probe.capture import tokenize
from attn_probe.compare.sanity import _reinitialise, find_layers, randomisation_check, randomisation_plan
from attn_probe.methods import ExplainContext, MethodInfo, get_method
from tests.capture.families import batch, build
from tests.methods.models import MODELS, our_decoder

POSITION_ONLY = MethodInfo(
    id="position_only",
    family="attention",
    needs_gradients=False,
    cost="none",
    sign="non-negative",
    description="1 / (1 + column): reads nothing but where a token is",
)


def position_only(ctx: ExplainContext) -> object:
    """An 'explanation' of the architecture only: it cannot change when the weights do."""
    columns = torch.arange(ctx.input_ids.shape[1], dtype=torch.float32)
    return ctx.finish(POSITION_ONLY, (1 / (1 + columns)).expand(ctx.input_ids.shape).clone())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["our-encoder", "hf-gpt2"])
def test_the_users_model_is_never_modified(model_name):
    model, inputs = (build("gpt2"), batch("gpt2")) if model_name == "hf-gpt2" else MODELS[model_name]()
    before, parameters = snapshot(model), [id(p) for p in model.parameters()]
    randomisation_check(model, inputs, ["saliency", "attention_rollout"], include_embeddings=True)
    randomisation_check(model, inputs, ["saliency"], cascade=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert [id(p) for p in model.parameters()] == parameters and not model.training
    if model_name == "hf-gpt2":  # its LM head stays tied to the token embeddings
        assert model.lm_head.weight is model.transformer.wte.weight


def test_an_architecture_only_explanation_stays_while_saliency_changes():
    model, inputs = MODELS["our-encoder"]()
    methods = {
        "position_only": position_only,
        "attention_rollout": get_method("attention_rollout")[1],
        "saliency": get_method("saliency")[1],
    }
    table = randomisation_check(model, inputs, methods, top_k=2)
    assert table["randomised_from"].unique().tolist() == ["head", "layer 1", "layer 0"]
    assert len(table) == 3 * 3 * 2  # steps x methods x examples
    fixed = table[table.method == "position_only"]
    assert (fixed["spearman"] == 1).all() and (fixed["topk_jaccard"] == 1).all()
    # the head (pooler + classifier) does not touch attention: rollout is exactly the same ...
    head = table[table.randomised_from == "head"].set_index("method")
    assert (head.loc["attention_rollout", "spearman"] == 1).all()
    assert (head.loc["attention_rollout", "topk_jaccard_abs"] == 1).all()
    # ... while saliency, a gradient through the head, moves at once, and further with the layers
    assert (head.loc["saliency", "spearman"] < 1).all()
    bottom = table[(table.randomised_from == "layer 0") & (table.method == "saliency")]
    assert bottom["spearman"].mean() < 0.9
    # the output moved with the weights; the compared tokens are the real ones
    assert (table["target_change"] != 0).all()
    assert table.groupby("example_id")["n_tokens"].first().tolist() == [7, 4]
    assert table["k"].unique().tolist() == [2]


def test_every_copy_explains_the_originally_resolved_target():
    model, inputs = MODELS["our-encoder"]()
    seen = []

    def recording(ctx: ExplainContext):
        seen.append(ctx.target.ids.clone())
        return position_only(ctx)

    table = randomisation_check(model, inputs, {"recording": recording})
    original = ExplainContext(model, inputs).target.ids
    assert len(seen) == 1 + 3 and all(torch.equal(ids, original) for ids in seen)
    assert table["prediction_changed"].any()  # so the fixed target matters here
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = logits[torch.arange(2), original].double()
    by_example = table.groupby("example_id")["target_original"].first()
    assert np.allclose(by_example.to_numpy(), expected.numpy(), atol=1e-5)
    probability = logits.softmax(-1)[torch.arange(2), original]
    assert np.allclose(table.groupby("example_id")["probability_original"].first(), probability, atol=1e-5)


def test_deterministic_under_a_seed_and_independent_steps_share_the_cascade_draws():
    model, inputs = MODELS["hf-llama"]()
    first = randomisation_check(model, inputs, ["saliency"], seed=3)
    again = randomisation_check(model, inputs, ["saliency"], seed=3)
    pd.testing.assert_frame_equal(first, again)
    other = randomisation_check(model, inputs, ["saliency"], seed=4)
    assert not np.allclose(first["target_randomised"], other["target_randomised"])
    independent = randomisation_check(model, inputs, ["saliency"], seed=3, cascade=False)
    assert not independent["cascade"].any() and first["cascade"].all()
    columns = ["spearman", "target_randomised"]
    # the head is the first step of both: the same random weights
    head = first[first.step == 1][columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(head, independent[independent.step == 1][columns].reset_index(drop=True))
    # the bottom layer alone is not the whole model random
    bottom = first.randomised_from == "layer 0"
    assert not np.allclose(first[bottom]["target_randomised"], independent[bottom]["target_randomised"])


def test_special_tokens_and_top_k_options(tokenizer, tiny_bert):
    inputs = tokenize(tokenizer, ["a gorgeous, witty movie", "dull"])
    options = {"tokenizer": tokenizer, "top_k": 0.5}
    table = randomisation_check(tiny_bert, inputs, {"position_only": position_only}, **options)
    per_example = table.groupby("example_id")[["n_tokens", "k"]].first()
    assert per_example["n_tokens"].tolist() == [len(t) - 2 for t in inputs.tokens]  # no [CLS], [SEP]
    assert per_example["k"].tolist() == [math.ceil(0.5 * (len(t) - 2)) for t in inputs.tokens]
    with_special = randomisation_check(
        tiny_bert, inputs, {"position_only": position_only}, include_special=True, top_k=3, tokenizer=tokenizer
    )
    assert with_special.groupby("example_id")["n_tokens"].first().tolist() == [len(t) for t in inputs.tokens]
    assert with_special.groupby("example_id")["k"].first().tolist() == [3, 3]
    # one real token: no rank correlation
    single = tokenize(tokenizer, ["dull"])
    lonely = randomisation_check(tiny_bert, single, {"position_only": position_only}, tokenizer=tokenizer)
    assert lonely["spearman"].isna().all() and (lonely["topk_jaccard"] == 1).all()


# ----------------------------------------------------------------------------------------------------
# layers and the plan
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model_name", "layers", "stack", "head", "embeddings"),
    [
        ("hf-bert", ["bert.encoder.layer.0", "bert.encoder.layer.1"], "encoder", ("bert.pooler.dense", "classifier"),
         ("bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
          "bert.embeddings.token_type_embeddings", "bert.embeddings.LayerNorm")),
        ("hf-llama", ["model.layers.0", "model.layers.1"], "decoder", ("model.norm", "lm_head"),
         ("model.embed_tokens",)),
        ("our-encoder", ["encoder.layers.0", "encoder.layers.1"], "encoder", ("pooler", "classifier"),
         ("encoder.embed.tokens", "encoder.embed.position.table", "encoder.embed.norm")),
        ("our-decoder", ["decoder.layers.0", "decoder.layers.1"], "decoder", ("decoder.final_norm", "lm_head"),
         ("decoder.embed.tokens",)),
    ],
)  # fmt: skip
def test_layers_are_found_in_hugging_face_and_our_models(model_name, layers, stack, head, embeddings):
    model, inputs = MODELS[model_name]()
    found = find_layers(model)
    assert [layer.name for layer in found] == layers
    assert [layer.index for layer in found] == [0, 1] and {layer.stack for layer in found} == {stack}
    plan = randomisation_plan(model, inputs, include_embeddings=True)
    assert [step.label for step in plan] == ["head", "layer 1", "layer 0", "embeddings"]
    assert [step.step for step in plan] == [1, 2, 3, 4]
    assert plan[0].modules == head and plan[-1].modules == embeddings
    assert all(name.startswith(layers[1] + ".") for name in plan[1].modules)
    every = [name for step in plan for name in step.modules]
    owned = [name for name, module in model.named_modules() if next(module.parameters(recurse=False), None) is not None]
    assert sorted(every) == sorted(owned)  # every module with parameters, exactly once
    assert [step.label for step in randomisation_plan(model, inputs)] == ["head", "layer 1", "layer 0"]


def test_the_plan_places_glue_shared_and_unused_modules():
    t5 = randomisation_plan(build("t5"), batch("t5"), include_embeddings=True)
    labels = [step.label for step in t5]
    assert labels == ["head", "decoder layer 1", "decoder layer 0", "encoder layer 1", "encoder layer 0", "embeddings"]
    steps = {step.label: step for step in t5}
    assert steps["head"].modules == ("decoder.final_layer_norm", "lm_head")
    assert "encoder.final_layer_norm" in steps["encoder layer 1"].modules  # runs between the stacks
    # the token embeddings T5 shares between its stacks move together, with the embeddings
    assert set(steps["embeddings"].modules) == {"shared", "encoder.embed_tokens", "decoder.embed_tokens"}
    deberta = randomisation_plan(build("deberta-v2"), batch("deberta-v2"), include_embeddings=True)
    # read through its weight by every layer, never called: not the head
    assert "deberta.encoder.rel_embeddings" in deberta[-1].modules
    assert "deberta.encoder.rel_embeddings" not in deberta[0].modules
    gpt2 = randomisation_plan(build("gpt2"), batch("gpt2"))
    assert gpt2[0].modules == ("transformer.ln_f", "lm_head")


# ----------------------------------------------------------------------------------------------------
# re-initialisation
# ----------------------------------------------------------------------------------------------------
def test_a_tied_head_is_untied_and_loaded_weights_are_re_initialised():
    model = copy.deepcopy(build("gpt2"))
    for parameter in model.parameters():  # what from_pretrained leaves behind: init is a no-op on these
        parameter._is_hf_initialized = True
    embeddings = model.transformer.wte.weight.detach().clone()
    attention = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    how = _reinitialise(model, ["lm_head", "transformer.h.0.attn.c_attn"], seed=0)
    assert how == {"lm_head": "_init_weights", "transformer.h.0.attn.c_attn": "_init_weights"}
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight, embeddings)  # the embeddings keep their weights
    assert not torch.equal(model.lm_head.weight, embeddings)
    assert not torch.equal(model.transformer.h[0].attn.c_attn.weight, attention)
    assert model.lm_head.weight.std().item() == pytest.approx(0.3, rel=0.1)  # its initializer_range


def test_fallbacks_for_modules_without_an_init():
    model = our_decoder()
    with torch.no_grad():
        model.decoder.final_norm.weight.normal_(1.0, 0.5)  # as if trained

    class Scaled(nn.Module):  # no reset_parameters
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(4000) * 3)
            self.flat = nn.Parameter(torch.full((8,), 0.25))

    model.extra = Scaled()
    table, flat = model.extra.table.detach().clone(), model.extra.flat.detach().clone()
    how = _reinitialise(model, ["decoder.final_norm", "extra", "lm_head"], seed=0)
    assert how == {
        "decoder.final_norm": "norm: weight 1, bias 0",
        "extra": "normal with the parameter's std",
        "lm_head": "reset_parameters",
    }
    assert torch.equal(model.decoder.final_norm.weight, torch.ones(32))
    assert not torch.equal(model.extra.table, table)
    assert model.extra.table.std().item() == pytest.approx(float(table.std()), rel=0.1)
    assert torch.equal(model.extra.flat, flat)  # a constant its init left alone counts as re-initialised
    # torch's global random state is the user's, untouched
    state = torch.random.get_rng_state()
    _reinitialise(model, ["lm_head"], seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_with_a_message():
    model, inputs = MODELS["our-encoder"]()
    with pytest.raises(ValueError, match="list of method ids"):
        randomisation_check(model, inputs, "saliency")
    with pytest.raises(ValueError, match="no method named 'salience'"):
        randomisation_check(model, inputs, ["salience"])
    with pytest.raises(ValueError, match="no methods given"):
        randomisation_check(model, inputs, [])
    with pytest.raises(ValueError, match="top_k as a fraction"):
        randomisation_check(model, inputs, ["saliency"], top_k=1.5)
    with pytest.raises(ValueError, match="top_k as a count"):
        randomisation_check(model, inputs, ["saliency"], top_k=0)
    with pytest.raises(ValueError, match="options given for methods that are not run"):
        randomisation_check(model, inputs, ["saliency"], options={"integrated_gradients": {"n_steps": 4}})
    with pytest.raises(ValueError, match="cascade must be True or False"):
        randomisation_check(model, inputs, ["saliency"], cascade="yes")
    with pytest.raises(ValueError, match="must map to a function"):
        randomisation_check(model, inputs, {"mine": 3})
    with pytest.raises(ValueError, match="neither an attn_probe model nor a Hugging Face model"):
        find_layers(nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------------------
# fixtures and a real model (slow)
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_randomisation_on_the_offline_sentiment_model():
    from attn_probe.models import load_model

    loaded = load_model("minilm-sentiment", device="cpu", progress=False)
    inputs = tokenize(loaded.tokenizer, ["a gorgeous, witty movie", "the plot drags on"])
    before = snapshot(loaded.model)
    table = randomisation_check(
        loaded.model, inputs, ["attention_rollout", "saliency"], tokenizer=loaded.tokenizer, top_k=3
    )
    assert all(torch.equal(before[key], value) for key, value in loaded.model.state_dict().items())
    assert table["randomised_from"].unique().tolist() == ["head", *[f"layer {i}" for i in range(5, -1, -1)]]
    head = table[table.randomised_from == "head"].set_index("method")
    assert (head.loc["attention_rollout", "spearman"] == 1).all()
    assert head.loc["saliency", "spearman"].min() < 1  # a gradient through the head moves with it
    bottom = table[(table.randomised_from == "layer 0") & (table.method == "saliency")]
    assert bottom["spearman"].mean() < 0.5  # and with all layers random little of its ranking is left
    # a trained classifier with its head and all layers random no longer knows the sentiment it predicted
    assert table[table.step == table.step.max()]["probability_randomised"].lt(0.99).all()
