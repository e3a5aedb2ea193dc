"""Parity of our models with Hugging Face BERT and Llama loaded through ``from_hf``.

Tiny random-init models built from configs (nothing is downloaded). They use eager attention, the
only implementation whose ``output_attentions=True`` returns the weights in transformers 5 (SDPA
returns none), and ``initializer_range=0.2`` so that attention is far from uniform: with the default
0.02 every head is almost uniform and matching weights would prove little.

What Hugging Face returns, and how it is compared:

- BERT ``hidden_states``: embeddings output, then each layer's output; same as ours, all compared.
  Padded query rows attend to the real keys in both implementations, so they are compared too.
- Llama ``hidden_states`` (transformers 5): embeddings output, each layer's output except the last,
  then ``last_hidden_state``, which is *after* the final RMSNorm. Ours keeps the last layer's output
  before the norm (``num_layers + 1`` residual-stream states, like BERT). So entries ``0..L-1`` are
  compared directly, and Hugging Face's last entry with ``last_hidden_state`` and with
  ``final_norm(ours.hidden_states[-1])``.
- Llama with left padding: a padded query that has no real key to its left is fully masked. Ours
  gives it all-zero weights; Hugging Face's eager path gives it a uniform distribution over every
  key, the future included. Such rows carry no information, so only real query rows are compared.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)

from attn_probe.attention.from_hf import (
    _rope_settings,
    config_from_bert,
    config_from_llama,
    decoder_from_llama,
    encoder_from_bert,
)

ATOL = 1e-5
VOCAB = 100


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def padded_batch(lengths: tuple[int, ...], n: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids [batch, n]`` (padding id 0) and ``attention_mask [batch, n]`` (1 = real token)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (len(lengths), n), generator=generator)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for row, length in enumerate(lengths):
        if left:
            mask[row, n - length :] = 1
        else:
            mask[row, :length] = 1
    return ids * mask, mask


def assert_not_uniform(attentions: tuple[torch.Tensor, ...], mask: torch.Tensor) -> None:
    """Some head of every layer puts clearly more than 1/(real keys) on a key: the check is not vacuous."""
    real_keys = mask.sum(-1).float()[:, None, None]  # [batch, 1, 1]
    for weights in attentions:  # [batch, heads, q, k]
        assert float((weights.amax(-1) - 1 / real_keys).max()) > 0.1


def assert_weights_returned(attentions: tuple[torch.Tensor, ...] | None, layers: int) -> None:
    assert attentions is not None and len(attentions) == layers > 0
    assert all(isinstance(weights, torch.Tensor) and weights.dim() == 4 for weights in attentions)


# ----------------------------------------------------------------------------------------------------
# BERT
# ----------------------------------------------------------------------------------------------------
def bert_config(**overrides) -> BertConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        initializer_range=0.2,
        layer_norm_eps=1e-7,  # not BERT's 1e-12: checks that the eps is carried over
        attn_implementation="eager",
    )
    settings.update(overrides)
    return BertConfig(**settings)


@pytest.mark.parametrize("with_segments", [False, True], ids=["no-token-types", "token-types"])
def test_bert_hidden_states_and_attentions_match(with_segments: bool) -> None:
    torch.manual_seed(0)
    hf = BertModel(bert_config()).eval()
    assert hf.config._attn_implementation == "eager"
    ours = encoder_from_bert(hf)
    assert not ours.training
    assert ours.encoder.layers[0].attention_norm.eps == 1e-7

    ids, mask = padded_batch((9, 6, 3), 9)
    token_types = None
    if with_segments:
        token_types = torch.zeros_like(ids)
        token_types[:, 2:] = 1
    with torch.no_grad():
        theirs = hf(
            ids, attention_mask=mask, token_type_ids=token_types, output_hidden_states=True, output_attentions=True
        )
        mine = ours(ids, mask, token_type_ids=token_types, output_hidden_states=True, output_attentions=True)

    layers = hf.config.num_hidden_layers
    assert_weights_returned(theirs.attentions, layers)
    assert len(theirs.hidden_states) == len(mine.hidden_states) == layers + 1
    for theirs_state, my_state in zip(theirs.hidden_states, mine.hidden_states, strict=True):
        assert max_diff(theirs_state, my_state) < ATOL  # padded rows included: they match too
    assert max_diff(theirs.last_hidden_state, mine.last_hidden_state) < ATOL
    for theirs_weights, my_weights in zip(theirs.attentions, mine.attentions, strict=True):
        assert max_diff(theirs_weights, my_weights) < ATOL
        padding_keys = ~mask.bool()[:, None, None, :].expand_as(my_weights)
        assert float(my_weights[padding_keys].abs().max()) == 0.0
    assert_not_uniform(mine.attentions, mask)


def test_bert_token_types_matter() -> None:
    """The segment embeddings are loaded (not left at zero): token types change the output of both."""
    torch.manual_seed(0)
    hf = BertModel(bert_config()).eval()
    ours = encoder_from_bert(hf)
    ids, mask = padded_batch((6, 6), 6)
    with torch.no_grad():
        plain = ours(ids, mask).last_hidden_state
        segmented = ours(ids, mask, token_type_ids=torch.ones_like(ids)).last_hidden_state
        theirs = hf(ids, attention_mask=mask, token_type_ids=torch.ones_like(ids)).last_hidden_state
    assert max_diff(plain, segmented) > 1e-2
    assert max_diff(segmented, theirs) < ATOL


def test_bert_sequence_classification_logits_match() -> None:
    torch.manual_seed(0)
    hf = BertForSequenceClassification(bert_config(num_labels=3)).eval()
    ours = encoder_from_bert(hf)
    assert ours.config.num_classes == 3 and ours.pooler is not None

    ids, mask = padded_batch((8, 5, 2), 8)
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, output_attentions=True)
        mine = ours(ids, mask, output_attentions=True)
    assert_weights_returned(theirs.attentions, hf.config.num_hidden_layers)
    assert mine.logits.shape == (3, 3)
    assert max_diff(theirs.logits, mine.logits) < ATOL
    assert float(mine.logits.std(0).max()) > 1e-3  # logits differ across the batch: not a constant
    for theirs_weights, my_weights in zip(theirs.attentions, mine.attentions, strict=True):
        assert max_diff(theirs_weights, my_weights) < ATOL


def test_bert_copy_is_independent_and_the_check_can_fail() -> None:
    """Changing a Hugging Face weight after loading changes their output only: ours owns its weights,
    and the comparison above is sensitive to a wrong weight."""
    torch.manual_seed(0)
    hf = BertModel(bert_config()).eval()
    ours = encoder_from_bert(hf)
    ids, mask = padded_batch((7, 4), 7)
    with torch.no_grad():
        # Noise, not a constant: a constant shift of the query weights adds a multiple of sum(x) to q,
        # and the LayerNorm output entering layer 1 sums to ~0 (its bias is 0 at init).
        hf.encoder.layer[1].attention.self.query.weight.add_(0.1 * torch.randn(32, 32))
        theirs = hf(ids, attention_mask=mask, output_attentions=True)
        mine = ours(ids, mask, output_attentions=True)
    assert max_diff(theirs.attentions[0], mine.attentions[0]) < ATOL
    assert max_diff(theirs.attentions[1], mine.attentions[1]) > 1e-3


def test_bert_without_pooler_loads_encoder_only() -> None:
    """A ``BertFor...`` model without a pooler (masked LM): the encoder matches, no pooler is invented."""
    torch.manual_seed(0)
    hf = BertForMaskedLM(bert_config()).eval()
    ours = encoder_from_bert(hf)
    assert ours.pooler is None
    ids, mask = padded_batch((5, 3), 5)
    with torch.no_grad():
        theirs = hf.bert(ids, attention_mask=mask).last_hidden_state
        mine = ours(ids, mask).last_hidden_state
    assert max_diff(theirs, mine) < ATOL


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"hidden_act": "gelu_new"}, "hidden_act"), ({"is_decoder": True}, "is_decoder")],
)
def test_bert_unsupported_layouts_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_bert(bert_config(**overrides))


# ----------------------------------------------------------------------------------------------------
# Llama
# ----------------------------------------------------------------------------------------------------
def llama_config(**overrides) -> LlamaConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=64,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        # not the default 10000: checks that the base is carried over (10000 would not match)
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
        initializer_range=0.2,
        attn_implementation="eager",
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def compare_llama(hf, ours, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Every comparable output of ``hf`` and ``ours`` on ``ids`` (all rows: right padding or none)."""
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        mine = ours(ids, mask, output_hidden_states=True, output_attentions=True)
    layers = hf.config.num_hidden_layers
    assert_weights_returned(theirs.attentions, layers)
    assert len(theirs.hidden_states) == len(mine.hidden_states) == layers + 1

    # Entries 0..L-1: embeddings, then layers 0..L-2; Hugging Face's last entry is after the final norm.
    compared = 0
    for theirs_state, my_state in zip(theirs.hidden_states[:-1], mine.hidden_states[:-1], strict=True):
        assert max_diff(theirs_state, my_state) < ATOL
        compared += 1
    assert compared == layers >= 2
    with torch.no_grad():
        my_final = ours.decoder.final_norm(mine.hidden_states[-1])
    assert max_diff(theirs.hidden_states[-1], mine.last_hidden_state) < ATOL
    assert max_diff(theirs.hidden_states[-1], my_final) < ATOL
    assert max_diff(mine.hidden_states[-1], mine.last_hidden_state) > 1e-2  # the norm is not a no-op here
    if isinstance(hf, LlamaForCausalLM):
        assert max_diff(theirs.logits, mine.logits) < ATOL
    else:
        assert max_diff(theirs.last_hidden_state, mine.last_hidden_state) < ATOL

    future = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
    for theirs_weights, my_weights in zip(theirs.attentions, mine.attentions, strict=True):
        assert max_diff(theirs_weights, my_weights) < ATOL
        assert float(my_weights[..., future].abs().max()) == 0.0  # causal
    # Past the first query (which can only attend to itself) the heads are far from uniform.
    real = torch.ones_like(ids) if mask is None else mask
    assert_not_uniform(tuple(weights[:, :, 1:] for weights in mine.attentions), real)


@pytest.mark.parametrize("model_class", [LlamaModel, LlamaForCausalLM])
def test_llama_matches(model_class) -> None:
    torch.manual_seed(0)
    hf = model_class(llama_config()).eval()
    assert hf.config._attn_implementation == "eager"
    ours = decoder_from_llama(hf)
    assert not ours.training
    assert ours.config.num_kv_heads == 2 and ours.config.head_dim == 8
    assert ours.config.position_options == {"base": 100.0}

    ids, _ = padded_batch((9, 9), 9)
    compare_llama(hf, ours, ids, None)


def test_llama_right_padded_batch_matches() -> None:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(llama_config()).eval()
    ours = decoder_from_llama(hf)
    ids, mask = padded_batch((9, 6, 3), 9)
    compare_llama(hf, ours, ids, mask)


def test_llama_left_padded_batch_with_positions_matches_on_real_tokens() -> None:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(llama_config()).eval()
    ours = decoder_from_llama(hf)
    ids, mask = padded_batch((9, 6, 3), 9, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, n]: each sequence starts at position 0
    with torch.no_grad():
        theirs = hf(ids, attention_mask=mask, position_ids=positions, output_hidden_states=True, output_attentions=True)
        mine = ours(ids, mask, positions=positions, output_hidden_states=True, output_attentions=True)
    real = mask.bool()  # [batch, n]: compare real query rows only (see the module docstring)
    assert max_diff(theirs.logits[real], mine.logits[real]) < ATOL
    for theirs_state, my_state in zip(theirs.hidden_states[:-1], mine.hidden_states[:-1], strict=True):
        assert max_diff(theirs_state[real], my_state[real]) < ATOL
    for theirs_weights, my_weights in zip(theirs.attentions, mine.attentions, strict=True):
        assert max_diff(theirs_weights.transpose(1, 2)[real], my_weights.transpose(1, 2)[real]) < ATOL
        # ours: a padded query with no real key to its left attends to nothing
        assert float(my_weights[2, :, :6].abs().max()) == 0.0
    # (RoPE logits depend on position differences only, so shifting each sequence to start at 0 is
    # invisible on the real tokens: this checks the per-example ``[batch, n]`` positions path, not the shift.)


def test_llama_tied_embeddings() -> None:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(llama_config(tie_word_embeddings=True)).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ours = decoder_from_llama(hf)
    assert ours.lm_head.weight is ours.decoder.embed.tokens.weight
    ids, mask = padded_batch((8, 5), 8)
    compare_llama(hf, ours, ids, mask)


@pytest.mark.parametrize(("attention_bias", "mlp_bias"), [(True, False), (False, True), (True, True)])
def test_llama_with_attention_and_mlp_biases(attention_bias: bool, mlp_bias: bool) -> None:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(llama_config(attention_bias=attention_bias, mlp_bias=mlp_bias)).eval()
    with torch.no_grad():  # Hugging Face initialises biases to zero: make them matter
        for layer in hf.model.layers:
            projections = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
            projections += (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
            for projection in projections:
                if projection.bias is not None:
                    projection.bias.normal_(0.0, 0.5)
    ours = decoder_from_llama(hf)
    assert (ours.decoder.layers[0].feed_forward.up.bias is not None) == mlp_bias
    assert (ours.decoder.layers[0].attention.q_proj.bias is not None) == attention_bias
    ids, mask = padded_batch((8, 5), 8)
    compare_llama(hf, ours, ids, mask)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0}}, "rope_type='linear'"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ],
)
def test_llama_unsupported_layouts_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_llama(llama_config(**overrides))


def test_rope_settings_of_older_configs() -> None:
    """transformers < 5 kept ``rope_theta`` as an attribute and the scaling in ``rope_scaling``."""
    assert _rope_settings(SimpleNamespace(rope_theta=500000.0, rope_scaling=None)) == ("default", 500000.0)
    assert _rope_settings(SimpleNamespace(rope_theta=1e4, rope_scaling={"type": "dynamic", "factor": 2.0}))[0] == (
        "dynamic"
    )
    assert _rope_settings(llama_config()) == ("default", 100.0)


# ----------------------------------------------------------------------------------------------------
# Wrong inputs
# ----------------------------------------------------------------------------------------------------
def test_wrong_model_classes_raise() -> None:
    torch.manual_seed(0)
    llama = LlamaModel(llama_config(num_hidden_layers=1))
    bert = BertModel(bert_config(num_hidden_layers=1))
    with pytest.raises(TypeError, match=r"BertModel.*got LlamaModel"):
        encoder_from_bert(llama)
    with pytest.raises(TypeError, match=r"LlamaModel or LlamaForCausalLM.*got BertModel"):
        decoder_from_llama(bert)
    with pytest.raises(TypeError, match="got Linear"):
        encoder_from_bert(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="BertConfig, got LlamaConfig"):
        config_from_bert(llama.config)
    with pytest.raises(TypeError, match="LlamaConfig, got BertConfig"):
        config_from_llama(bert.config)
