"""Capture through transformers' ``AttentionInterface``: the true weights whatever backend a model runs.

A model loaded with SDPA or flash attention computes no weights, and transformers 5 then returns an
empty ``attentions`` tuple. Models written against the ``AttentionInterface`` look their attention
function up by ``config._attn_implementation`` at every call, so for the duration of a capture we
point it at :func:`capturing_attention` — registered under the name ``attn_probe`` — which computes
eager attention exactly as the reference implementation does (it receives q and k after RoPE and the
model's own mask, scaling and position bias, and repeats grouped key/value heads itself), hands the
weights to the active :class:`Recorder`, and returns what eager attention returns. On exit the
implementation of every config in the model is restored to what it was, exceptions included.

The capture runs eager attention, so outputs drift from the model's own (fused) backend by float
rounding; :func:`attn_probe.capture.capture` measures that drift.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from attn_probe.capture.recorder import Recorder

CAPTURE_IMPLEMENTATION = "attn_probe"
_ACTIVE: ContextVar[Recorder | None] = ContextVar("attn_probe_recorder", default=None)
# Keyword arguments that change the attention maths and that this function does not reproduce.
_UNSUPPORTED_KWARGS = ("s_aux", "sinks", "attention_sink")


def capturing_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention that reports to the active recorder.

    ``query [batch, heads, q, d]``, ``key``/``value [batch, kv_heads, k, d]``; returns
    ``(output [batch, q, heads, d], weights [batch, heads, q, k])`` like transformers' eager functions.
    """
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"{type(module).__name__} passes '{name}' (attention sinks) to its attention function, which "
                "attn_probe's capture does not reproduce yet: its weights would be wrong, so it refuses"
            )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: every query head reads its group's key/value head
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling

    logits = (query @ key.transpose(-1, -2)) * scaling  # [b, h, q, k]
    position_bias = kwargs.get("position_bias")  # T5 passes its relative bias apart from the mask
    if position_bias is not None:
        logits = logits + position_bias
    softcap = kwargs.get("softcap")
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min) if mask.dtype == torch.bool else logits + mask
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)  # [b, h, q, k]

    recorder = _ACTIVE.get()
    if recorder is not None:
        weights = recorder.attention(recorder.site_of(module), weights, value, position_bias)
    dropped = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = (dropped @ value).transpose(1, 2).contiguous()  # [b, q, h, d]
    return output, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(CAPTURE_IMPLEMENTATION, capturing_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_IMPLEMENTATION, eager_mask)  # the mask eager attention gets


def model_configs(model: nn.Module) -> list:
    """Every config object a model's modules read their attention implementation from."""
    from transformers import PretrainedConfig

    found: dict[int, object] = {}
    pending = [
        module.config for module in model.modules() if isinstance(getattr(module, "config", None), PretrainedConfig)
    ]
    while pending:
        config = pending.pop()
        if id(config) in found or not hasattr(config, "_attn_implementation_internal"):
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None:
                pending.append(sub)
    return list(found.values())


def supports_attention_interface(model: nn.Module) -> bool:
    """True when the model dispatches attention through transformers' ``AttentionInterface``.

    Models that declare ``_supports_attention_backend`` do; some that do not declare it (T5) still
    look their function up in ``ALL_ATTENTION_FUNCTIONS``, which their modeling module then imports.
    """
    if getattr(model, "_supports_attention_backend", False):
        return True
    modeling_module = sys.modules.get(type(model).__module__)
    return modeling_module is not None and hasattr(modeling_module, "ALL_ATTENTION_FUNCTIONS")


@contextmanager
def interface_capture(model: nn.Module, recorder: Recorder) -> Iterator[None]:
    """Run the model's attention through :func:`capturing_attention` inside the block."""
    _register()
    configs = model_configs(model)
    saved = [(config, config._attn_implementation_internal) for config in configs]
    token = _ACTIVE.set(recorder)
    try:
        for config in configs:
            config._attn_implementation_internal = CAPTURE_IMPLEMENTATION
        yield
    finally:
        for config, implementation in saved:
            config._attn_implementation_internal = implementation
        _ACTIVE.reset(token)
