"""Load Hugging Face BERT and Llama weights into our own hookable models.

Why this exists: the probe's attention implementation (``multi_head``, ``blocks``, ``models``) exposes
every intermediate (q, k, v, logits, weights, per-head outputs) on a named hook point, which the
Hugging Face implementations do not. Copying the weights of a real ``BertModel`` / ``LlamaModel``
into our :class:`~attn_probe.attention.models.EncoderClassifier` / :class:`DecoderLM` lets the same
analyses and interventions run on real architectures, and matching their hidden states, attention
weights and logits to float precision (``tests/attention/test_from_hf.py``) proves that our math is
theirs: a finding made with our hooks is a finding about the original model.

    encoder = encoder_from_bert(BertForSequenceClassification.from_pretrained(...))  # EncoderClassifier
    decoder = decoder_from_llama(LlamaForCausalLM.from_pretrained(...))               # DecoderLM

Only layouts that our models reproduce exactly are accepted; anything else (relative positions in
BERT, scaled RoPE, other activations, ...) raises a ``ValueError`` naming what is
unsupported instead of loading a model that silently computes something else. A model of another
class raises a ``TypeError`` naming the accepted classes.

Heads that the source model does not have are left freshly initialised (untrained): the classifier
of an encoder loaded from a bare ``BertModel`` (or a ``BertFor...`` model other than
``BertForSequenceClassification``), and the LM head of a decoder loaded from a bare ``LlamaModel``
with untied embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attn_probe.attention.models import DecoderLM, EncoderClassifier, TransformerConfig

if TYPE_CHECKING:
    from transformers import BertConfig, LlamaConfig

_BERT_ACCEPTED = (
    "a transformers BertModel, or a BertFor... model holding one as `.bert` (e.g. BertForSequenceClassification)"
)
_LLAMA_ACCEPTED = "a transformers LlamaModel or LlamaForCausalLM"


# ----------------------------------------------------------------------------------------------------
# BERT
# ----------------------------------------------------------------------------------------------------
def config_from_bert(
    bert_config: BertConfig, *, num_classes: int | None = None, pooler: bool = True
) -> TransformerConfig:
    """The :class:`TransformerConfig` of a post-norm encoder laid out like ``bert_config``.

    ``num_classes`` defaults to ``bert_config.num_labels``; ``pooler``: whether the encoder has BERT's
    dense + tanh pooler on [CLS] before its classifier.
    """
    from transformers import BertConfig

    if not isinstance(bert_config, BertConfig):
        raise TypeError(f"config_from_bert expects a transformers BertConfig, got {type(bert_config).__name__}")
    unsupported = []
    position_type = getattr(bert_config, "position_embedding_type", "absolute")  # gone in transformers 5
    if position_type not in (None, "absolute"):
        unsupported.append(f"position_embedding_type={position_type!r} (only 'absolute' learned positions)")
    if bert_config.hidden_act != "gelu":
        unsupported.append(f"hidden_act={bert_config.hidden_act!r} (only the exact 'gelu')")
    if bert_config.is_decoder or bert_config.add_cross_attention:
        unsupported.append("is_decoder / add_cross_attention (only a bidirectional encoder)")
    if unsupported:
        raise ValueError("cannot reproduce this BERT with our encoder: unsupported " + "; ".join(unsupported))
    return TransformerConfig(
        vocab_size=bert_config.vocab_size,
        embed_dim=bert_config.hidden_size,
        num_heads=bert_config.num_attention_heads,
        num_layers=bert_config.num_hidden_layers,
        ffn_dim=bert_config.intermediate_size,
        position="learned",
        max_positions=bert_config.max_position_embeddings,
        type_vocab_size=bert_config.type_vocab_size,
        norm="layernorm",
        norm_eps=bert_config.layer_norm_eps,
        prenorm=False,
        embedding_norm=True,
        mlp="gelu",
        bias=True,
        dropout=float(bert_config.hidden_dropout_prob),
        attention_dropout=float(bert_config.attention_probs_dropout_prob),
        num_classes=bert_config.num_labels if num_classes is None else num_classes,
        pooler=pooler,
        tie_embeddings=False,
        pad_token_id=bert_config.pad_token_id if bert_config.pad_token_id is not None else 0,
    )


def encoder_from_bert(model: nn.Module) -> EncoderClassifier:
    """Our :class:`EncoderClassifier` with the weights of a Hugging Face BERT.

    Accepts a ``BertModel`` or any ``BertFor...`` model (its ``.bert`` is used); from a
    ``BertForSequenceClassification`` the pooler and classifier are copied too, so the logits match.
    The result is on the model's device and dtype, in its train/eval mode, and shares no storage
    with it.
    """
    from transformers import BertForSequenceClassification, BertModel

    if isinstance(model, BertModel):
        bert, classifier = model, None
    elif isinstance(getattr(model, "bert", None), BertModel):
        bert = model.bert
        classifier = model.classifier if isinstance(model, BertForSequenceClassification) else None
    else:
        raise TypeError(f"encoder_from_bert expects {_BERT_ACCEPTED}; got {type(model).__name__}")

    num_classes = classifier.out_features if classifier is not None else None
    config = config_from_bert(bert.config, num_classes=num_classes, pooler=bert.pooler is not None)
    ours = EncoderClassifier(config)

    embeddings = bert.embeddings
    weights: dict[str, torch.Tensor] = {
        "encoder.embed.tokens.weight": embeddings.word_embeddings.weight,
        "encoder.embed.position.table.weight": embeddings.position_embeddings.weight,
        "encoder.embed.norm.weight": embeddings.LayerNorm.weight,
        "encoder.embed.norm.bias": embeddings.LayerNorm.bias,
    }
    if config.type_vocab_size:
        weights["encoder.embed.segments.weight"] = embeddings.token_type_embeddings.weight
    for i, layer in enumerate(bert.encoder.layer):
        prefix = f"encoder.layers.{i}."
        attention = layer.attention
        _add_linear(weights, prefix + "attention.q_proj", attention.self.query)
        _add_linear(weights, prefix + "attention.k_proj", attention.self.key)
        _add_linear(weights, prefix + "attention.v_proj", attention.self.value)
        _add_linear(weights, prefix + "attention.out_proj", attention.output.dense)
        _add_norm(weights, prefix + "attention_norm", attention.output.LayerNorm)
        _add_linear(weights, prefix + "feed_forward.up", layer.intermediate.dense)
        _add_linear(weights, prefix + "feed_forward.down", layer.output.dense)
        _add_norm(weights, prefix + "ffn_norm", layer.output.LayerNorm)
    if bert.pooler is not None:
        _add_linear(weights, "pooler", bert.pooler.dense)
    untrained: set[str] = set()
    if classifier is not None:
        _add_linear(weights, "classifier", classifier)
    else:
        untrained = {"classifier.weight", "classifier.bias"}

    _load(ours, weights, untrained, source=model)
    return ours


# ----------------------------------------------------------------------------------------------------
# Llama
# ----------------------------------------------------------------------------------------------------
def _rope_settings(llama_config: Any) -> tuple[str, float | None]:
    """``(rope_type, rope_theta)`` from a transformers 5 ``rope_parameters`` or the older attributes."""
    parameters = getattr(llama_config, "rope_parameters", None)
    if parameters is None:  # transformers < 5: rope_theta and an optional rope_scaling dict
        scaling = getattr(llama_config, "rope_scaling", None) or {}
        parameters = {**scaling, "rope_theta": getattr(llama_config, "rope_theta", None)}
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    theta = parameters.get("rope_theta")
    return rope_type, None if theta is None else float(theta)


def config_from_llama(llama_config: LlamaConfig) -> TransformerConfig:
    """The :class:`TransformerConfig` of a pre-norm RMSNorm/SwiGLU/RoPE decoder laid out like ``llama_config``."""
    from transformers import LlamaConfig

    if not isinstance(llama_config, LlamaConfig):
        raise TypeError(f"config_from_llama expects a transformers LlamaConfig, got {type(llama_config).__name__}")
    rope_type, theta = _rope_settings(llama_config)
    unsupported = []
    if rope_type != "default":
        unsupported.append(f"rope_type={rope_type!r} (only 'default' RoPE, no scaling)")
    if theta is None:
        unsupported.append("a RoPE without rope_theta")
    if llama_config.hidden_act not in ("silu", "swish"):
        unsupported.append(f"hidden_act={llama_config.hidden_act!r} (only 'silu', i.e. SwiGLU)")
    if unsupported:
        raise ValueError("cannot reproduce this Llama with our decoder: unsupported " + "; ".join(unsupported))
    num_heads = llama_config.num_attention_heads
    head_dim = getattr(llama_config, "head_dim", None) or llama_config.hidden_size // num_heads
    return TransformerConfig(
        vocab_size=llama_config.vocab_size,
        embed_dim=llama_config.hidden_size,
        num_heads=num_heads,
        num_layers=llama_config.num_hidden_layers,
        ffn_dim=llama_config.intermediate_size,
        num_kv_heads=getattr(llama_config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        position="rotary",
        position_options={"base": theta},
        max_positions=llama_config.max_position_embeddings,
        type_vocab_size=0,
        norm="rmsnorm",
        norm_eps=llama_config.rms_norm_eps,
        prenorm=True,
        embedding_norm=False,
        mlp="swiglu",
        bias=bool(llama_config.attention_bias),
        mlp_bias=bool(getattr(llama_config, "mlp_bias", False)),
        dropout=0.0,
        attention_dropout=float(llama_config.attention_dropout or 0.0),
        pooler=False,
        tie_embeddings=bool(llama_config.tie_word_embeddings),
        pad_token_id=llama_config.pad_token_id if llama_config.pad_token_id is not None else 0,
    )


def decoder_from_llama(model: nn.Module) -> DecoderLM:
    """Our :class:`DecoderLM` with the weights of a Hugging Face Llama.

    Accepts a ``LlamaModel`` or a ``LlamaForCausalLM`` (whose ``lm_head`` is copied, or tied to the
    token embeddings when ``config.tie_word_embeddings``). The result is on the model's device and
    dtype, in its train/eval mode, and shares no storage with it.
    """
    from transformers import LlamaForCausalLM, LlamaModel

    if isinstance(model, LlamaForCausalLM):
        llama, lm_head = model.model, model.lm_head
    elif isinstance(model, LlamaModel):
        llama, lm_head = model, None
    else:
        raise TypeError(f"decoder_from_llama expects {_LLAMA_ACCEPTED}; got {type(model).__name__}")

    config = config_from_llama(llama.config)
    ours = DecoderLM(config)

    weights: dict[str, torch.Tensor] = {"decoder.embed.tokens.weight": llama.embed_tokens.weight}
    for i, layer in enumerate(llama.layers):
        prefix = f"decoder.layers.{i}."
        attention = layer.self_attn
        _add_linear(weights, prefix + "attention.q_proj", attention.q_proj)
        _add_linear(weights, prefix + "attention.k_proj", attention.k_proj)
        _add_linear(weights, prefix + "attention.v_proj", attention.v_proj)
        _add_linear(weights, prefix + "attention.out_proj", attention.o_proj)
        _add_norm(weights, prefix + "attention_norm", layer.input_layernorm)
        _add_linear(weights, prefix + "feed_forward.gate", layer.mlp.gate_proj)
        _add_linear(weights, prefix + "feed_forward.up", layer.mlp.up_proj)
        _add_linear(weights, prefix + "feed_forward.down", layer.mlp.down_proj)
        _add_norm(weights, prefix + "ffn_norm", layer.post_attention_layernorm)
    _add_norm(weights, "decoder.final_norm", llama.norm)

    untrained: set[str] = set()
    if config.tie_embeddings:
        # lm_head.weight *is* the embedding matrix in ours; a source with a different head would not match
        if lm_head is not None and not torch.equal(lm_head.weight, llama.embed_tokens.weight):
            raise ValueError(
                "config.tie_word_embeddings is True but this LlamaForCausalLM's lm_head differs from its "
                "token embeddings: untie them (config.tie_word_embeddings=False) to load it"
            )
        weights["lm_head.weight"] = llama.embed_tokens.weight
    elif lm_head is not None:
        weights["lm_head.weight"] = lm_head.weight
    else:
        untrained = {"lm_head.weight"}

    _load(ours, weights, untrained, source=model)
    return ours


# ----------------------------------------------------------------------------------------------------
# Shared
# ----------------------------------------------------------------------------------------------------
def _add_linear(weights: dict[str, torch.Tensor], name: str, linear: nn.Linear) -> None:
    weights[name + ".weight"] = linear.weight  # [out, in], same layout on both sides
    if linear.bias is not None:
        weights[name + ".bias"] = linear.bias


def _add_norm(weights: dict[str, torch.Tensor], name: str, norm: nn.Module) -> None:
    weights[name + ".weight"] = norm.weight
    if getattr(norm, "bias", None) is not None:
        weights[name + ".bias"] = norm.bias


def _load(ours: nn.Module, weights: dict[str, torch.Tensor], untrained: set[str], *, source: nn.Module) -> None:
    """Copy ``weights`` into ``ours``; every tensor of ours must be covered unless named ``untrained``."""
    reference = next(source.parameters())
    ours.to(device=reference.device)
    state = ours.state_dict()
    missing = sorted(set(state) - set(weights) - untrained)
    extra = sorted(set(weights) - set(state))
    if missing or extra:  # a layout mismatch between the two implementations: a bug here, not the user's
        raise RuntimeError(
            f"weight mapping from {type(source).__name__} is incomplete: missing {missing}, extra {extra}"
        )
    for name, tensor in weights.items():
        if tensor.shape != state[name].shape:
            raise ValueError(
                f"{type(source).__name__} weight for {name} has shape {tuple(tensor.shape)}, "
                f"ours expects {tuple(state[name].shape)}"
            )
        state[name] = tensor.detach()
    ours.load_state_dict(state, strict=True)  # copies: ours shares no storage with the source
    if reference.dtype != torch.float32:
        # Parameters only: buffers such as the rotary frequencies stay float32 (Hugging Face builds them in float32).
        with torch.no_grad():
            for parameter in ours.parameters():
                parameter.data = parameter.data.to(reference.dtype)
    ours.train(source.training)
