"""attn_probe: is this attention map telling me what the model actually used?

The pipeline, one sub-package a step (see docs/design.md):

    models/      load a model + tokenizer, know its family
    capture/     run it once, record what attention did; edit weights during the pass
    methods/     token importance for one target: attention-derived, gradient and perturbation methods
    compare/     agreement, faithfulness, counterfactual attention, sinks, position bias, sanity checks
    findings/    verdicts on when attention is (and is not) a fair explanation, with evidence; summaries
    probe.py     Probe: the notebook entry point (explain texts, run datasets, plot)
    store/       runs on disk: manifest + Parquet chunks, resumable
    report/      self-contained HTML + Markdown reports of a run, seaborn figures
    attention/   our own multi-head attention, position variants, hook points, small models
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``attn_probe.Probe`` and ``attn_probe.load_run`` without importing torch & co. at ``import attn_probe``."""
    if name == "Probe":
        from attn_probe.probe import Probe

        return Probe
    if name == "load_run":
        from attn_probe.store import load_run

        return load_run
    raise AttributeError(f"module 'attn_probe' has no attribute {name!r}")


def list_methods() -> "pd.DataFrame":
    """Every explanation method with its metadata (family, gradients, cost, sign): a pandas DataFrame."""
    from attn_probe.methods import list_methods as _list_methods

    return _list_methods()
