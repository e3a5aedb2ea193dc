"""The notebook entry point: one object that explains texts, compares the explanations and judges attention.

    from attn_probe import Probe
    probe = Probe.load("minilm-sentiment")           # an offline name, a Hugging Face id or a local path
    result = probe.explain(["a gorgeous, witty movie", "a dull, lifeless film"])
    result.scores          # example_id, method, token_index, token, special, score, target
    result.agreement       # method-vs-method Kendall / Spearman / top-k per example
    result.findings        # verdicts: what holds, what does not, with evidence and thresholds
    result.summary()       # how often each finding holds, with Wilson intervals
    result.plot("tokens", example_id=0)              # seaborn figures (also "heads", "sinks", "findings")
    run = probe.run(texts_or_file, out="runs/sentiment")   # dataset scale, on disk, resumable

Defaults, all overridable: methods :data:`DEFAULT_METHODS` (attention-derived ones are judged, gradient and
perturbation ones are the references they are judged against); target = the predicted class's logit for a
classifier, the log-probability of the top next token for a language model; checks :data:`DEFAULT_CHECKS`
(the adversarial search and the randomisation test cost more: ``checks=CHECKS`` adds them).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from attn_probe.capture import Target, TokenizedBatch, tokenize
from attn_probe.findings import CHECKS, Assessment, Thresholds, assess, summarise
from attn_probe.methods.base import Explanation, get_method
from attn_probe.models.families import detect_family

DEFAULT_METHODS = ("raw_attention", "attention_rollout", "attention_flow", "integrated_gradients", "leave_one_out")
DEFAULT_CHECKS = ("agreement", "erasure", "sinks", "position", "counterfactuals")
JUDGED_FAMILIES = ("attention", "hybrid")  # explanations read from attention weights: the ones judged
REFERENCE_FAMILIES = ("gradient", "perturbation")  # what they are judged against


@dataclass
class ProbeResult:
    """What :meth:`Probe.explain` found on a list of texts; every table is tidy, ``example_id`` = text index."""

    model_name: str
    texts: list[str]
    batches: list[TokenizedBatch]
    assessments: list[Assessment]
    examples: pd.DataFrame  # example_id, text, n_tokens, truncated, target, prediction
    scores: pd.DataFrame  # example_id, method, token_index, position, token, special, score, target
    findings: pd.DataFrame  # attn_probe.findings.FINDING_COLUMNS
    evidence: dict[str, pd.DataFrame] = field(default_factory=dict)  # every comparison table, all batches
    methods: pd.DataFrame = field(default_factory=pd.DataFrame)  # id, family, judged, sign, ...

    @property
    def agreement(self) -> pd.DataFrame:
        """Method-vs-method agreement per example (empty when the ``agreement`` check was not run)."""
        return self.evidence.get("agreement", pd.DataFrame())

    @property
    def explanations(self) -> dict[str, Explanation]:
        """The raw explanations (tensors) of the first batch; ``assessments[i].explanations`` for batch ``i``."""
        return self.assessments[0].explanations

    def summary(self, *, by: Sequence[str] = (), slices: pd.DataFrame | None = None) -> pd.DataFrame:
        """How often each finding holds (:func:`attn_probe.findings.summarise`)."""
        return summarise(self.findings, by=by, slices=slices)

    def plot(self, kind: str = "tokens", *, example_id: int = 0, methods: Sequence[str] | None = None) -> Any:
        """A seaborn figure: ``"tokens"`` (one example, every method side by side), ``"heads"`` (each head's
        agreement with the reference methods), ``"sinks"`` (each head's share of attention on special tokens)
        or ``"findings"`` (how often each finding holds). Returns a matplotlib Figure (``.savefig`` exports)."""
        from attn_probe.report import figures

        if kind == "tokens":
            target = self.examples.loc[self.examples["example_id"] == example_id, "target"]
            context = f"{self.model_name}; target: {target.iloc[0] if len(target) else '?'}"
            return figures.token_scores_figure(self.scores, example_id, methods=methods, context=context)
        if kind == "heads":
            table = self._evidence("head_agreement", "agreement with per-head views (raw_attention, attention_norm)")
            context = f"{self.model_name}; Kendall tau of each head's target-row attention with the references"
            return figures.head_heatmap_figure(table, "kendall_tau", context=context, label="Kendall tau")
        if kind == "sinks":
            table = self._evidence("sinks", "sinks")
            context = f"{self.model_name}; share of attention on special tokens"
            return figures.head_heatmap_figure(table, "special_share", context=context, diverging=False)
        if kind == "findings":
            return figures.findings_figure(self.summary(), context=self.model_name)
        raise ValueError(f"unknown plot kind {kind!r}; choose tokens, heads, sinks or findings")

    def _evidence(self, name: str, check: str) -> pd.DataFrame:
        if name not in self.evidence:
            raise ValueError(f"this result has no {name!r} table: run explain with the {check} check")
        return self.evidence[name]


class Probe:
    """A model and its tokenizer, ready to explain texts and judge its attention (see the module)."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, name: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Probe needs a torch model (nn.Module), got {type(model).__name__}: try Probe.load(name)")
        self.family = detect_family(model)  # refuses a model whose attention we cannot capture, with the reason
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        task: str = "auto",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Probe:
        """Load an offline model (``attn-probe models``), a Hugging Face id or a local directory."""
        from attn_probe.models import load_model

        loaded = load_model(name_or_path, task=task, device=device, dtype=dtype)
        return cls(loaded.model, loaded.tokenizer, name=loaded.name)

    def __repr__(self) -> str:
        return f"Probe({self.name!r}, family={self.family.name}, mechanism={self.family.mechanism})"

    # ------------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> TokenizedBatch:
        """Tokenize ``texts`` (warns once, with counts, when examples are truncated to the model's maximum)."""
        if self.tokenizer is None:
            raise ValueError("this Probe has no tokenizer: pass one (Probe(model, tokenizer)) or use Probe.load")
        batch = tokenize(self.tokenizer, list(texts), max_length=max_length)
        if any(batch.truncated):
            cut = sum(batch.truncated)
            warnings.warn(
                f"{cut} of {len(batch)} texts were longer than the model's maximum of {batch.seq_len} tokens and were "
                "truncated at the end (tokens past it are not explained)",
                UserWarning,
                stacklevel=3,
            )
        return batch

    def explain(
        self,
        texts: str | Sequence[str],
        methods: Sequence[str] | None = None,
        target: Target | None = None,
        *,
        checks: Sequence[str] = DEFAULT_CHECKS,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        thresholds: Thresholds | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        seed: int = 0,
    ) -> ProbeResult:
        """Explain ``texts`` with ``methods``, compare them and judge the attention methods among them.

        ``methods``: method ids (default :data:`DEFAULT_METHODS`); those of family attention / hybrid are
        judged, gradient / perturbation ones are the references (at least one of each for the agreement and
        erasure checks). ``target``: a :class:`~attn_probe.capture.Target` (default: the predicted class, or
        the top next token). ``checks``: any of :data:`attn_probe.findings.CHECKS`. ``options``: per method
        keyword options. Texts are processed ``batch_size`` at a time.

        Example::

            result = probe.explain(["a gorgeous, witty movie"], methods=["attention_rollout", "saliency"])
            result.findings[["finding", "holds", "statement"]]
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts to explain: pass a non-empty list of strings")
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise ValueError(f"texts {bad[:10]} are empty or not strings: every text needs some content to explain")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        judged, references = split_methods(methods if methods is not None else DEFAULT_METHODS)
        batches, assessments = [], []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[start : start + batch_size], max_length=max_length)
            batches.append(batch)
            assessments.append(
                assess(
                    self.model, batch, tokenizer=self.tokenizer, target=target, attention_methods=judged,
                    reference_methods=references, checks=checks, method_options=options,
                    thresholds=thresholds or Thresholds(), seed=seed,
                )
            )  # fmt: skip
        return self._result(texts, batches, assessments, [*judged, *references], batch_size)

    # ------------------------------------------------------------------------------------------------
    def _result(
        self,
        texts: list[str],
        batches: list[TokenizedBatch],
        assessments: list[Assessment],
        methods: list[str],
        batch_size: int,
    ) -> ProbeResult:
        examples, scores, findings = [], [], []
        evidence: dict[str, list[pd.DataFrame]] = {}
        for index, (batch, assessment) in enumerate(zip(batches, assessments, strict=True)):
            offset = index * batch_size
            first = next(iter(assessment.explanations.values()))
            descriptions = first.target.descriptions(self.tokenizer)
            examples.append(
                pd.DataFrame(
                    {
                        "example_id": [offset + i for i in range(len(batch))],
                        "text": batch.texts,
                        "n_tokens": batch.lengths,
                        "truncated": batch.truncated,
                        "target": descriptions,
                        "prediction": first.target.ids.tolist(),
                    }
                )
            )
            for explanation in assessment.explanations.values():
                frame = explanation.to_frame(batch)
                frame["target"] = [descriptions[i] for i in frame["example_id"]]
                scores.append(_shift(frame, offset))
            findings.append(_shift(assessment.findings, offset))
            for name, table in assessment.evidence.items():
                evidence.setdefault(name, []).append(_shift(table, offset))
        return ProbeResult(
            model_name=self.name,
            texts=texts,
            batches=batches,
            assessments=assessments,
            examples=pd.concat(examples, ignore_index=True),
            scores=pd.concat(scores, ignore_index=True).sort_values("example_id", kind="stable", ignore_index=True),
            findings=pd.concat(findings, ignore_index=True),
            evidence={name: pd.concat(tables, ignore_index=True) for name, tables in evidence.items()},
            methods=method_table(methods),
        )


def split_methods(methods: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(judged, references)``: attention / hybrid method ids, and gradient / perturbation ones."""
    chosen = list(dict.fromkeys(methods))
    if not chosen:
        raise ValueError("no methods chosen: pass method ids (attn_probe.list_methods() lists them)")
    families = {method: get_method(method)[0].family for method in chosen}  # KeyError names the methods there are
    judged = [m for m in chosen if families[m] in JUDGED_FAMILIES]
    references = [m for m in chosen if families[m] in REFERENCE_FAMILIES]
    if not judged:
        raise ValueError(f"none of {chosen} is derived from attention: add one (e.g. 'raw_attention') to judge")
    return judged, references


def method_table(methods: Sequence[str]) -> pd.DataFrame:
    """One row per method: ``id, family, judged, needs_gradients, sign, cost``."""
    rows = []
    for method in methods:
        info = get_method(method)[0]
        rows.append(
            {
                "id": info.id,
                "family": info.family,
                "judged": info.family in JUDGED_FAMILIES,
                "needs_gradients": info.needs_gradients,
                "sign": info.sign,
                "cost": info.cost,
            }
        )
    return pd.DataFrame(rows)


def _shift(frame: pd.DataFrame, offset: int) -> pd.DataFrame:
    if "example_id" not in frame or offset == 0:
        return frame
    shifted = frame.copy()
    shifted["example_id"] = shifted["example_id"] + offset
    return shifted


__all__ = ["CHECKS", "DEFAULT_CHECKS", "DEFAULT_METHODS", "Probe", "ProbeResult", "method_table", "split_methods"]
