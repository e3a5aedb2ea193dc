"""Position variants, each a small module that plugs into :class:`MultiHeadAttention`.

``make_position(name, ...)`` builds one by its id; ``POSITION_VARIANTS`` lists the ids.
"""

from __future__ import annotations

from typing import Any

from attn_probe.attention.position.absolute import LearnedAbsolute, Sinusoidal
from attn_probe.attention.position.alibi import ALiBi, alibi_slopes
from attn_probe.attention.position.base import PositionEncoding, relative_distance
from attn_probe.attention.position.rotary import Rotary, rotate_half
from attn_probe.attention.position.shaw import RelativeShaw
from attn_probe.attention.position.t5 import T5RelativeBias, t5_bucket

POSITION_VARIANTS = ("none", "learned", "sinusoidal", "shaw", "t5", "alibi", "rotary")


def make_position(
    name: str,
    *,
    embed_dim: int,
    num_heads: int,
    head_dim: int,
    max_positions: int = 512,
    causal: bool = False,
    **options: Any,
) -> PositionEncoding | None:
    """Build the position variant ``name``; ``options`` go to its constructor (e.g. ``max_distance``)."""
    if name == "none":
        return None
    if name == "learned":
        return LearnedAbsolute(embed_dim, max_positions, **options)
    if name == "sinusoidal":
        return Sinusoidal(embed_dim, **options)
    if name == "shaw":
        return RelativeShaw(head_dim, **options)
    if name == "t5":
        return T5RelativeBias(num_heads, bidirectional=not causal, **options)
    if name == "alibi":
        return ALiBi(num_heads, **options)
    if name == "rotary":
        return Rotary(head_dim, **options)
    raise ValueError(f"unknown position variant '{name}'; choose one of {', '.join(POSITION_VARIANTS)}")


__all__ = [
    "POSITION_VARIANTS",
    "ALiBi",
    "LearnedAbsolute",
    "PositionEncoding",
    "RelativeShaw",
    "Rotary",
    "Sinusoidal",
    "T5RelativeBias",
    "alibi_slopes",
    "make_position",
    "relative_distance",
    "rotate_half",
    "t5_bucket",
]
