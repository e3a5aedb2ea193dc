"""Capture from models whose attention is written inline (BLOOM, DeBERTa-v2), and from our own models.

Inline implementations compute the softmaxed weights and pass them straight through a dropout
module: a forward hook on that module sees them (its input) and can replace them (by returning new
dropout output). The values come from a hook on the module that projects them. Both hooks are
removed on exit, exceptions included.

Our own models expose the same through their named hook points (``hook_v``, ``hook_weights``,
``hook_position``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from attn_probe.attention.hooks import HookPoint
from attn_probe.attention.multi_head import MultiHeadAttention
from attn_probe.capture.recorder import Recorder
from attn_probe.capture.sites import Site
from attn_probe.models.families import NativeSpec


@contextmanager
def native_capture(model: nn.Module, recorder: Recorder, spec: NativeSpec) -> Iterator[None]:
    handles = []
    pending_values: dict[Site, torch.Tensor] = {}
    try:
        for name, module in model.named_modules():
            if type(module).__name__ != spec.attention_class:
                continue
            site = recorder.namer.site(name)

            def on_values(_source, _args, output, site=site, attention=module) -> None:
                pending_values[site] = spec.values(attention, output)  # [b, h, k, d]

            def on_weights(dropout, args, output, site=site) -> torch.Tensor | None:
                weights = args[0]  # [b, h, q, k]: the dropout's input, i.e. before dropout
                used = recorder.attention(site, weights, pending_values.pop(site, None))
                if used is weights:
                    return None
                return F.dropout(used, getattr(dropout, "p", 0.0), dropout.training)

            handles.append(module.get_submodule(spec.value_source).register_forward_hook(on_values))
            handles.append(module.get_submodule(spec.weights_module).register_forward_hook(on_weights))
        if not handles:
            raise ValueError(f"no {spec.attention_class} module found in {type(model).__name__}")
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def ours_capture(model: nn.Module, recorder: Recorder) -> Iterator[None]:
    """The same through our models' hook points; hooks go when the block ends."""
    with ExitStack() as stack:
        for name, module in model.named_modules():
            if isinstance(module, MultiHeadAttention):
                _hook_attention(stack, module, recorder.namer.site(name), recorder)
        yield


def _hook_attention(stack: ExitStack, attention: MultiHeadAttention, site: Site, recorder: Recorder) -> None:
    seen: dict[str, torch.Tensor] = {}

    def on_values(values: torch.Tensor, _point: HookPoint) -> None:
        seen["values"] = attention._repeat_kv(values)  # [b, h, k, d]

    def on_position(term: torch.Tensor, _point: HookPoint) -> None:
        seen["position"] = term

    def on_weights(weights: torch.Tensor, _point: HookPoint) -> torch.Tensor:
        return recorder.attention(site, weights, seen.pop("values", None), seen.pop("position", None))

    for point, fn in (
        (attention.hook_v, on_values),
        (attention.hook_position, on_position),
        (attention.hook_weights, on_weights),
    ):
        stack.callback(point.add_hook(fn))
