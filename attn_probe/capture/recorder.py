"""The recorder: what every capture mechanism hands its tensors to, and where weight edits are applied.

Whatever the mechanism (our own hook points, an attention function registered with transformers, or
hooks on a native eager implementation), each attention call ends in :meth:`Recorder.attention`: it
applies the requested edits to the weights, keeps what analyses need, and returns the weights the
model must go on with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from attn_probe.capture.sites import Site, SiteNamer

#: ``fn(weights [batch, heads, q, k], None) -> new weights or None``: the hook functions of
#: :mod:`attn_probe.attention.interventions` (``uniform_weights``, ``permute_weights``, ...) fit.
WeightsEdit = Callable[[torch.Tensor, None], "torch.Tensor | None"]
#: Layer keys for edits: a layer index of the main stack, or ``(stack, layer)``.
EditKey = int | tuple[str, int]


@dataclass
class SiteRecord:
    weights: torch.Tensor  # [batch, heads, q, k], after edits: what the model used
    values: torch.Tensor | None  # [batch, heads, k, head_dim], one per query head (grouped kv repeated)
    head_outputs: torch.Tensor | None  # [batch, heads, q, head_dim] = weights @ values
    position_bias: torch.Tensor | None = None  # [batch or 1, heads, q, k] when the model passes one apart


@dataclass
class Recorder:
    """One capture or intervention session over one model."""

    module_names: dict[int, str]  # id(module) -> name, for the mechanisms that see modules
    namer: SiteNamer
    main_stack: str
    edits: dict[tuple[str, int], list[WeightsEdit]] = field(default_factory=dict)
    keep: bool = True  # False: apply edits only (an intervention without capture)
    keep_values: bool = True
    detach: bool = True
    records: dict[Site, SiteRecord] = field(default_factory=dict)
    seen: set[tuple[str, int]] = field(default_factory=set)

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        *,
        main_stack: str,
        is_encoder_decoder: bool,
        is_decoder_only: bool,
        edits: Mapping[EditKey, WeightsEdit | list[WeightsEdit]] | None = None,
        **options: bool,
    ) -> Recorder:
        recorder = cls(
            module_names={id(module): name for name, module in model.named_modules()},
            namer=SiteNamer(is_encoder_decoder=is_encoder_decoder, is_decoder_only=is_decoder_only),
            main_stack=main_stack,
            **options,
        )
        for key, fns in (edits or {}).items():
            stack, layer = (main_stack, key) if isinstance(key, int) else key
            recorder.edits[(stack, layer)] = list(fns) if isinstance(fns, list) else [fns]
        return recorder

    def site_of(self, module: nn.Module) -> Site | None:
        name = self.module_names.get(id(module))
        return None if name is None else self.namer.site(name)

    def attention(
        self,
        site: Site | None,
        weights: torch.Tensor,
        values: torch.Tensor | None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply edits to ``weights [batch, heads, q, k]``, record, and return the weights to use."""
        if site is None:
            return weights
        self.seen.add((site.stack, site.layer))
        for edit in self.edits.get((site.stack, site.layer), []):
            replaced = edit(weights, None)
            if replaced is not None:
                if replaced.shape != weights.shape:
                    raise ValueError(
                        f"an edit of {site.stack} layer {site.layer} returned shape {tuple(replaced.shape)}, "
                        f"expected {tuple(weights.shape)} [batch, heads, q, k]"
                    )
                weights = replaced
        if self.keep:
            keep = (lambda t: t.detach()) if self.detach else (lambda t: t)
            head_outputs = weights @ values if values is not None else None  # [b, h, q, d]
            self.records[site] = SiteRecord(
                weights=keep(weights),
                values=keep(values) if values is not None and self.keep_values else None,
                head_outputs=keep(head_outputs) if head_outputs is not None and self.keep_values else None,
                position_bias=keep(position_bias) if position_bias is not None else None,
            )
        return weights

    def check_edits_applied(self) -> None:
        """An edit of a layer that never ran is a typo, not a no-op: say so."""
        missing = sorted(set(self.edits) - self.seen)
        if missing:
            ran = sorted(self.seen)
            raise ValueError(
                f"edits for {missing} were never applied: no such attention layer ran (layers that ran: {ran})"
            )
