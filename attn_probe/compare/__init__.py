"""Compare explanations with each other and with what the model does.

One module per question: ``agreement`` (do two methods rank tokens alike?), ``faithfulness`` (does erasing
the top-ranked tokens move the output?), ``counterfactual`` (does the output move when attention is
changed?), ``sinks`` (where does attention pile up, and does it carry anything there?), ``position`` (how
much of a head's pattern is position alone?), ``sanity`` (does an explanation change when the model is
randomised?). Every function returns a tidy pandas DataFrame, one row per example (and layer / head).
"""

from attn_probe.compare.agreement import agreement_table, layer_agreement, layer_agreement_table, rank_agreement
from attn_probe.compare.counterfactual import (
    CounterfactualOutputs,
    adversarial_attention,
    attention_counterfactuals,
    counterfactual_outputs,
)
from attn_probe.compare.faithfulness import (
    comprehensiveness_sufficiency,
    decision_flips,
    deletion_insertion,
    faithfulness_report,
)
from attn_probe.compare.position import attention_by_distance, logit_parts, position_explained, position_logit_share
from attn_probe.compare.sanity import find_layers, randomisation_check, randomisation_plan
from attn_probe.compare.sinks import attention_sinks

__all__ = [
    "CounterfactualOutputs",
    "adversarial_attention",
    "agreement_table",
    "attention_by_distance",
    "attention_counterfactuals",
    "attention_sinks",
    "comprehensiveness_sufficiency",
    "counterfactual_outputs",
    "decision_flips",
    "deletion_insertion",
    "faithfulness_report",
    "find_layers",
    "layer_agreement",
    "layer_agreement_table",
    "logit_parts",
    "position_explained",
    "position_logit_share",
    "randomisation_check",
    "randomisation_plan",
    "rank_agreement",
]
