"""attn_probe: is this attention map telling me what the model actually used?

The pipeline, one sub-package a step (see docs/design.md):

    attention/   our own multi-head attention, position variants, hook points, small models
"""

__version__ = "0.1.0"
