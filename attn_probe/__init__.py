"""attn_probe: is this attention map telling me what the model actually used?

The pipeline, one sub-package a step (see docs/design.md):

    models/      load a model + tokenizer, know its family
    capture/     run it once, record what attention did; edit weights during the pass
    methods/     token importance for one target: attention-derived, gradient and perturbation methods
    compare/     agreement, faithfulness, counterfactual attention, sinks, position bias, sanity checks
    findings/    verdicts on when attention is (and is not) a fair explanation, with evidence; summaries
    attention/   our own multi-head attention, position variants, hook points, small models
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__version__ = "0.1.0"


def list_methods() -> "pd.DataFrame":
    """Every explanation method with its metadata (family, gradients, cost, sign): a pandas DataFrame."""
    from attn_probe.methods import list_methods as _list_methods

    return _list_methods()
