"""Our own attention: multi-head scaled dot-product attention, position variants, hook points,
interventions, and small Transformers built from them (a model family, and a lab with known truth)."""

from attn_probe.attention.blocks import FeedForward, RMSNorm, TransformerBlock
from attn_probe.attention.hooks import HookPoint, hook_points, hooks, record
from attn_probe.attention.interventions import permute_weights, scale_weights, set_weights, uniform_weights
from attn_probe.attention.linear import LINEAR_POSITIONS, LinearAttention, linear_attention
from attn_probe.attention.masks import causal_mask
from attn_probe.attention.models import DecoderLM, EncoderClassifier, ModelOutput, TransformerConfig
from attn_probe.attention.multi_head import ATTENTION_KINDS, LogitParts, MultiHeadAttention, make_attention_kind
from attn_probe.attention.position import (
    POSITION_VARIANTS,
    ALiBi,
    LearnedAbsolute,
    PositionEncoding,
    RelativeShaw,
    Rotary,
    Sinusoidal,
    T5RelativeBias,
    make_position,
)
from attn_probe.attention.sparse import BlockSparse, SlidingWindow, SparsePattern, sparse_attention

__all__ = [
    "ATTENTION_KINDS",
    "LINEAR_POSITIONS",
    "POSITION_VARIANTS",
    "ALiBi",
    "BlockSparse",
    "DecoderLM",
    "EncoderClassifier",
    "FeedForward",
    "HookPoint",
    "LearnedAbsolute",
    "LinearAttention",
    "LogitParts",
    "ModelOutput",
    "MultiHeadAttention",
    "PositionEncoding",
    "RMSNorm",
    "RelativeShaw",
    "Rotary",
    "Sinusoidal",
    "SlidingWindow",
    "SparsePattern",
    "T5RelativeBias",
    "TransformerBlock",
    "TransformerConfig",
    "causal_mask",
    "hook_points",
    "hooks",
    "linear_attention",
    "make_attention_kind",
    "make_position",
    "permute_weights",
    "record",
    "scale_weights",
    "set_weights",
    "sparse_attention",
    "uniform_weights",
]
