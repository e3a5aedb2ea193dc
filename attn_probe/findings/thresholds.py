"""The thresholds every verdict is judged by: visible, documented, and changeable in one place.

A finding is a claim ("the output barely moves when this attention is permuted"), and a claim needs a line
drawn somewhere. The defaults below are where the literature draws them where it does, and round numbers
where it does not; every finding row carries the threshold it was judged by, so a reader can disagree with
the line and still use the numbers.

    Thresholds()                             # the defaults
    Thresholds(ignored_tvd=0.05)             # a looser notion of "the output did not move"
    Thresholds().to_frame()                  # name, value, meaning: for a report's appendix
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import pandas as pd

_MEANINGS = {
    "disagreement_tau": "attention 'disagrees' with the attributions when its mean Kendall tau with them is at "
    "most this",
    "consensus_tau": "the reference attributions form a consensus when their mean Kendall tau among themselves is at "
    "least this (else the disagreement finding is not assessable)",
    "sink_share": "a head is a sink candidate when at least this share of its attention goes to special tokens",
    "sink_norm_drop": "... and a sink when the norm-weighted share is at most this fraction of the raw share",
    "ignored_tvd": "the output 'barely moves' when the total variation distance of the output distribution is at "
    "most this under every permutation and under uniform attention",
    "changed_attention_jsd": "an intervention counts only if it changed the attention by at least this JSD (nats)",
    "adversarial_jsd": "an adversarial attention is 'very different' at this JSD (nats) from the original or more "
    f"(the maximum is ln 2 = {math.log(2):.3f})",
    "erasure_ratio": "erasing the most attended tokens 'changes the prediction less' when its comprehensiveness is at "
    "most this fraction of the best reference method's",
    "erasure_min_effect": "... provided erasing the reference's top tokens moves the target at least this much",
    "position_r2": "position alone 'explains' a head's pattern when the relative-distance profile reaches this R^2",
    "randomisation_rho": "an explanation 'survives randomisation' when its Spearman rho (of |scores|) with the "
    "original after the whole model is randomised is at least this",
    "ig_relative_convergence_delta": "an integrated-gradients result is flagged when its scores miss f(input) - "
    "f(baseline) by more than this share of it (its relative convergence delta; also the method's warning line "
    "unless its delta_tolerance option is given)",
    "capture_drift": "a batch's attention capture is flagged when its logits differ from those of the model's own "
    "attention backend by more than this (max absolute difference; for a float16 / bfloat16 model the line is "
    "raised to 16 units in the last place of the largest logit)",
}


@dataclass(frozen=True)
class Thresholds:
    """Where each verdict draws its line (see ``Thresholds.to_frame()`` for what each one means)."""

    disagreement_tau: float = 0.2
    consensus_tau: float = 0.4
    sink_share: float = 0.5
    sink_norm_drop: float = 0.5
    ignored_tvd: float = 0.01
    changed_attention_jsd: float = 0.01
    adversarial_jsd: float = 0.3
    erasure_ratio: float = 0.5
    erasure_min_effect: float = 0.05
    position_r2: float = 0.8
    randomisation_rho: float = 0.7
    ig_relative_convergence_delta: float = 0.05
    capture_drift: float = 1e-3

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"threshold {item.name} must be a finite number, got {value!r}")
        for name in ("sink_share", "sink_norm_drop", "ignored_tvd", "erasure_ratio", "position_r2"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"threshold {name} is a share and must be in [0, 1], got {getattr(self, name)}")
        for name in ("changed_attention_jsd", "adversarial_jsd"):
            if not 0.0 <= getattr(self, name) <= math.log(2):
                raise ValueError(
                    f"threshold {name} is a JSD in nats and must be in [0, ln 2], got {getattr(self, name)}"
                )
        for name in ("ig_relative_convergence_delta", "capture_drift"):
            if getattr(self, name) < 0:
                raise ValueError(f"threshold {name} is a tolerance and must be >= 0, got {getattr(self, name)}")
        for name in ("disagreement_tau", "consensus_tau", "randomisation_rho"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"threshold {name} is a correlation and must be in [-1, 1], got {getattr(self, name)}")

    def to_frame(self) -> pd.DataFrame:
        """One row per threshold: ``name, value, meaning``."""
        return pd.DataFrame(
            [{"name": name, "value": value, "meaning": _MEANINGS[name]} for name, value in asdict(self).items()]
        )


DEFAULT_THRESHOLDS = Thresholds()
