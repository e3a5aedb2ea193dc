"""Run a model once and record what its attention did: weights, values, per-head outputs, position terms.

Works on our own models and on Hugging Face models whatever attention backend they were loaded with;
weight edits (replace, scale, permute, uniform) apply during the same pass. See ``capture.py``.
"""

from attn_probe.capture.capture import AttentionCapture, StackCapture, capture, intervene

__all__ = ["AttentionCapture", "StackCapture", "capture", "intervene"]
