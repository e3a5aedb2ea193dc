"""What attn_probe knows about each architecture: how its attention is captured, and where things are.

Three mechanisms, one per kind of implementation:

- ``ours``: our own models (``attn_probe.attention``), through their hook points;
- ``interface``: Hugging Face models that dispatch attention through ``AttentionInterface`` (BERT,
  RoBERTa, ELECTRA, DistilBERT, GPT-2, Llama, Qwen2, Mistral, T5, and most new architectures) — no
  table needed, see ``capture/backend.py``;
- ``native``: models whose attention is written inline and always eager (BLOOM, DeBERTa-v2). For these
  a small :class:`NativeSpec` says which child module the weights pass through (to read and replace
  them) and where the value vectors come from. A new one is a new entry in :data:`NATIVE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NativeSpec:
    attention_class: str  # class name of the attention modules
    weights_module: str  # child module whose input is the softmaxed weights [batch, heads, q, k]
    value_source: str  # child module whose output holds the value vectors
    values: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (attention, source output) -> [b, h, k, d]


def _bloom_values(attention: nn.Module, fused_qkv: torch.Tensor) -> torch.Tensor:
    return attention._reshape(fused_qkv)[2]  # BLOOM interleaves q, k, v per head: its own split


def _deberta_values(attention: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    batch, length, _ = projected.shape
    return projected.view(batch, length, attention.num_attention_heads, -1).transpose(1, 2)


NATIVE: dict[str, NativeSpec] = {
    "bloom": NativeSpec("BloomAttention", "attention_dropout", "query_key_value", _bloom_values),
    "deberta-v2": NativeSpec("DisentangledSelfAttention", "dropout", "value_proj", _deberta_values),
}


class UnsupportedModelError(ValueError):
    """The model's attention cannot be captured; the message says what is missing."""


@dataclass(frozen=True)
class Family:
    name: str  # "ours" or the Hugging Face model_type
    mechanism: str  # "ours", "interface" or "native"
    is_encoder_decoder: bool
    is_decoder_only: bool
    native: NativeSpec | None = None

    @property
    def main_stack(self) -> str:
        """The stack a single-sequence analysis looks at: the decoder of a decoder-only model, else the encoder."""
        return "decoder" if self.is_decoder_only else "encoder"


def detect_family(model: nn.Module) -> Family:
    """How to capture ``model``'s attention, or an :class:`UnsupportedModelError` saying why not."""
    from attn_probe.attention.models import DecoderLM, EncoderClassifier

    if isinstance(model, EncoderClassifier):
        return Family("ours", "ours", is_encoder_decoder=False, is_decoder_only=False)
    if isinstance(model, DecoderLM):
        return Family("ours", "ours", is_encoder_decoder=False, is_decoder_only=True)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is neither an attn_probe model nor a Hugging Face model (no config.model_type): "
            "wrap it in attn_probe.attention modules or load it with transformers"
        )
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    is_decoder_only = not is_encoder_decoder and _is_decoder_only(model_type, config)
    if model_type in NATIVE:
        return Family(model_type, "native", is_encoder_decoder, is_decoder_only, NATIVE[model_type])
    from attn_probe.capture.backend import supports_attention_interface

    if supports_attention_interface(model):
        return Family(model_type, "interface", is_encoder_decoder, is_decoder_only)
    raise UnsupportedModelError(
        f"cannot capture attention of {type(model).__name__} (model_type '{model_type}'): it does not dispatch "
        "attention through transformers' AttentionInterface, and attn_probe/models/families.py has no NATIVE "
        "entry for it (the child module its softmaxed weights pass through, and where its values come from). If "
        "the architecture has no attention at all (a state-space model such as Mamba, a convolutional one), "
        "there is no attention for attn_probe to judge"
    )


def _is_decoder_only(model_type: str, config: object) -> bool:
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    # BERT-likes also have a causal-LM head class; a model with a masked-LM head is an encoder.
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


# Where the output projection W_O of an attention site lives, tried in order: an attribute of the
# attention module (Llama o_proj, GPT-2 c_proj, T5 o, DistilBERT out_lin, BLOOM dense, ours out_proj),
# or BERT-style, a sibling `output.dense` of the module that holds it.
_OWN_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "o", "out_lin", "dense")
_SIBLING_PROJECTIONS = ("output.dense",)


def output_projection(model: nn.Module, site_name: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(weight [embed, heads * head_dim], bias [embed] or None)`` of a site's output projection.

    GPT-2's ``Conv1D`` stores its weight transposed; it is returned in ``nn.Linear`` layout.
    """
    site = model.get_submodule(site_name)
    candidates = [getattr(site, name, None) for name in _OWN_PROJECTIONS]
    parent_name = site_name.rsplit(".", 1)[0] if "." in site_name else ""
    parent = model.get_submodule(parent_name)
    for path in _SIBLING_PROJECTIONS:
        try:
            candidates.append(parent.get_submodule(path))
        except AttributeError:
            continue
    for module in candidates:
        if module is None or not hasattr(module, "weight"):
            continue
        weight = module.weight.T if type(module).__name__ == "Conv1D" else module.weight
        return weight.detach(), (module.bias.detach() if getattr(module, "bias", None) is not None else None)
    return None
