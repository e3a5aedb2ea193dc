"""Run a model once and record what its attention did: weights, values, per-head outputs, position terms.

Works on our own models and on Hugging Face models whatever attention backend they were loaded with;
weight edits (replace, scale, permute, uniform) apply during the same pass. See ``capture.py``. Inputs
come from :func:`tokenize` (tokens with a special-token mask and word alignment); the scalar being
explained is a :class:`Target`.
"""

from attn_probe.capture.capture import AttentionCapture, NonFiniteError, StackCapture, capture, intervene
from attn_probe.capture.targets import ResolvedTarget, Target, resolve, target_value
from attn_probe.capture.tokens import TokenizedBatch, aggregate_to_words, tokenize

__all__ = [
    "AttentionCapture",
    "NonFiniteError",
    "ResolvedTarget",
    "StackCapture",
    "Target",
    "TokenizedBatch",
    "aggregate_to_words",
    "capture",
    "intervene",
    "resolve",
    "target_value",
    "tokenize",
]
