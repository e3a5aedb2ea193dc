"""Where attention happens in a model: its attention modules ("sites"), grouped into stacks of layers.

A site is found by its module name. Names differ by architecture (``bert.encoder.layer.3.attention.self``,
``model.layers.3.self_attn``, ``decoder.block.3.layer.1.EncDecAttention``) but share a shape: a layer
index inside an otherwise fixed path. Replacing the integers by ``#`` gives the site's *pattern*; sites
with one pattern form a stack (encoder self-attention, decoder self-attention, cross-attention), and the
first integer is the layer. No architecture needs its own table for this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_INTEGER = re.compile(r"(?<=\.)\d+(?=\.|$)")


@dataclass(frozen=True)
class Site:
    name: str  # full module name in the model
    stack: str  # "encoder", "decoder" or "cross"
    layer: int  # index within its stack


def site_pattern(name: str) -> tuple[str, int]:
    """``("decoder.block.#.layer.#.EncDecAttention", 3)`` for ``decoder.block.3.layer.1.EncDecAttention``."""
    numbers = _INTEGER.findall(name)
    if not numbers:
        raise ValueError(f"attention module '{name}' has no layer index in its name")
    return _INTEGER.sub("#", name), int(numbers[0])


def stack_label(pattern: str, *, is_encoder_decoder: bool, is_decoder_only: bool) -> str:
    lowered = pattern.lower()
    if "cross" in lowered or "encdec" in lowered or "enc_dec" in lowered:
        return "cross"
    if is_encoder_decoder:
        return "decoder" if "decoder" in lowered.split(".#")[0] else "encoder"
    return "decoder" if is_decoder_only else "encoder"


class SiteNamer:
    """Turns attention module names into sites, and notices two module kinds claiming one stack."""

    def __init__(self, *, is_encoder_decoder: bool = False, is_decoder_only: bool = False) -> None:
        self.is_encoder_decoder = is_encoder_decoder
        self.is_decoder_only = is_decoder_only
        self._pattern_of_stack: dict[str, str] = {}

    def site(self, name: str) -> Site:
        pattern, layer = site_pattern(name)
        label = stack_label(pattern, is_encoder_decoder=self.is_encoder_decoder, is_decoder_only=self.is_decoder_only)
        known = self._pattern_of_stack.setdefault(label, pattern)
        if known != pattern:
            raise ValueError(
                f"two kinds of attention modules look like the same stack '{label}': {known} and {pattern}; "
                "this architecture needs an entry in attn_probe/models/families.py"
            )
        return Site(name, label, layer)
