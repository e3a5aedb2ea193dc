"""Findings: verdicts about when attention is (and is not) a fair explanation, with their evidence.

``verdicts`` turns each comparison table of :mod:`attn_probe.compare` into finding rows (what holds, what does
not, the numbers and the threshold behind it); ``thresholds`` holds every line drawn; ``summary`` counts how
often each finding holds over a dataset, by slice, with intervals; ``assess`` runs it all on one batch;
``flags`` says which numbers not to lean on (integrated gradients that did not converge, a capture that drifted
from the model's own attention backend) and which findings rest on them.
"""

from attn_probe.findings.assess import CHECKS, Assessment, assess
from attn_probe.findings.flags import FLAG_COLUMNS, flag_dependence, numerical_flags, resting_on_flags
from attn_probe.findings.summary import example_slices, headlines, summarise, wilson_interval
from attn_probe.findings.thresholds import Thresholds
from attn_probe.findings.verdicts import (
    FINDING_COLUMNS,
    FINDINGS,
    adversarial_attention_exists,
    attention_disagrees,
    attention_no_better_than_random,
    attention_sink,
    erasure_prefers_attributions,
    head_disagrees,
    output_ignores_attention,
    position_explains_head,
    survives_randomisation,
)

__all__ = [
    "CHECKS",
    "FINDINGS",
    "FINDING_COLUMNS",
    "FLAG_COLUMNS",
    "Assessment",
    "Thresholds",
    "adversarial_attention_exists",
    "assess",
    "attention_disagrees",
    "attention_no_better_than_random",
    "attention_sink",
    "erasure_prefers_attributions",
    "example_slices",
    "flag_dependence",
    "head_disagrees",
    "headlines",
    "numerical_flags",
    "output_ignores_attention",
    "position_explains_head",
    "resting_on_flags",
    "summarise",
    "survives_randomisation",
    "wilson_interval",
]
