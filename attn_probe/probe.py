"""The notebook entry point: one object that explains texts, compares the explanations and judges attention.

    from attn_probe import Probe
    probe = Probe.load("minilm-sentiment")           # an offline name, a Hugging Face id or a local path
    result = probe.explain(["a gorgeous, witty movie", "a dull, lifeless film"])
    result.scores          # example_id, method, token_index, token, special, score, target
    result.agreement       # method-vs-method Kendall / Spearman / top-k per example
    result.findings        # verdicts: what holds, what does not, with evidence and thresholds
    result.summary()       # how often each finding holds, with Wilson intervals
    result.flagged         # numbers not to lean on: unconverged integrated gradients, capture drift (result.flags)
    result.plot("tokens", example_id=0)              # seaborn figures (also "heads", "sinks", "findings")
    run = probe.run(texts_or_file, out="runs/sentiment")   # dataset scale, on disk, resumable

Defaults, all overridable: methods :data:`DEFAULT_METHODS` (attention-derived ones are judged, gradient and
perturbation ones are the references they are judged against); target = the predicted class's logit for a
classifier, the log-probability of the top next token for a language model; checks :data:`DEFAULT_CHECKS`
(the adversarial search and the randomisation test cost more: ``checks=CHECKS`` adds them).

Numerical honesty: every integrated-gradients result carries its convergence delta and every batch the drift of
the attention capture from the model's own backend, in the ``flags`` table (:mod:`attn_probe.findings.flags`:
``example_id, method, check, scope, value, threshold, flagged``), flagged above ``Thresholds``'s
``ig_relative_convergence_delta`` / ``capture_drift``. Integrated gradients' own warnings are gathered into one
per call (a :class:`~attn_probe.methods.gradient.ConvergenceWarning`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from attn_probe.capture import AttentionCapture, Target, TokenizedBatch, capture, tokenize
from attn_probe.findings import CHECKS, Assessment, Thresholds, assess, summarise
from attn_probe.findings.flags import IG_CHECK, concat_flags, drift_flags, empty_flags, flag_summary, max_drift
from attn_probe.methods.base import Explanation, get_method
from attn_probe.methods.gradient import ConvergenceWarning
from attn_probe.models.families import detect_family

DEFAULT_METHODS = ("raw_attention", "attention_rollout", "attention_flow", "integrated_gradients", "leave_one_out")
DEFAULT_CHECKS = ("agreement", "erasure", "flips", "sinks", "position", "counterfactuals")
RUN_TABLES = ("examples", "scores", "findings", "attention", "flags")  # + one table per comparison (evidence name)
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
    flags: pd.DataFrame = field(default_factory=empty_flags)  # attn_probe.findings.flags.FLAG_COLUMNS

    @property
    def flagged(self) -> pd.DataFrame:
        """The flagged rows of :attr:`flags`: integrated-gradients results that did not converge (relative
        convergence delta above its threshold) and batches whose capture drifted from the model's backend."""
        return self.flags[self.flags["flagged"].astype(bool)].reset_index(drop=True)

    @property
    def drift(self) -> float | None:
        """The largest drift of the attention capture from the model's own backend over every batch (max
        absolute logit difference; per batch in :attr:`flags`, check ``capture_drift``); None if not measured."""
        return max_drift(self.flags)

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


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class RunPlan:
    """How every batch of a dataset run is explained (sent as is to Ray workers, so plain data only)."""

    judged: list[str]
    references: list[str]
    target: Target | None
    checks: tuple[str, ...]
    options: dict[str, dict[str, Any]]
    thresholds: Thresholds
    max_length: int | None
    seed: int
    sampled: frozenset[int]  # example ids whose full attention matrices are kept

    @property
    def methods(self) -> list[str]:
        return [*self.judged, *self.references]


@dataclass
class ShardResult:
    """One batch of a run, ready to be written: its example ids, tables, sampled matrices, and the integrated-
    gradients warnings held back for the run's one summary."""

    ids: list[int]
    tables: dict[str, pd.DataFrame]
    samples: dict[str, dict[int, Any]]
    caught: list[warnings.WarningMessage]


class Probe:
    """A model and its tokenizer, ready to explain texts and judge its attention (see the module)."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, *, name: str | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Probe needs a torch model (nn.Module), got {type(model).__name__}: try Probe.load(name)")
        self.family = detect_family(model)  # refuses a model whose attention we cannot capture, with the reason
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
        self.source: dict[str, Any] | None = None  # set by Probe.load: what a Ray worker loads instead of a copy

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
        probe = cls(loaded.model, loaded.tokenizer, name=loaded.name)
        probe.source = {"name_or_path": name_or_path, "task": task, "dtype": dtype}  # how a worker loads it again
        return probe

    def __repr__(self) -> str:
        return f"Probe({self.name!r}, family={self.family.name}, mechanism={self.family.mechanism})"

    # ------------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> TokenizedBatch:
        """Tokenize ``texts`` (warns once, with counts, when examples are truncated to the model's maximum)."""
        if self.tokenizer is None:
            raise ValueError("this Probe has no tokenizer: pass one (Probe(model, tokenizer)) or use Probe.load")
        batch = tokenize(self.tokenizer, list(texts), max_length=max_length)
        if any(batch.truncated):
            long = [text for text, cut in zip(batch.texts, batch.truncated, strict=True) if cut]
            full = [len(ids) for ids in self.tokenizer(long, add_special_tokens=True)["input_ids"]]  # untruncated
            lost = [length - batch.seq_len for length in full]
            warnings.warn(
                f"{len(long)} of {len(batch)} texts were longer than the model's maximum of {batch.seq_len} tokens and "
                f"were truncated at the end: {sum(lost)} tokens (up to {max(lost)} of one text) are not explained",
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        judged, references = split_methods(methods if methods is not None else DEFAULT_METHODS)
        thresholds = thresholds or Thresholds()
        batches, assessments = [], []
        caught: list[warnings.WarningMessage] = []
        with _gathering_convergence_warnings(caught):
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize(texts[start : start + batch_size], max_length=max_length)
                batches.append(batch)
                assessment = assess(
                    self.model, batch, tokenizer=self.tokenizer, target=target, attention_methods=judged,
                    reference_methods=references, checks=checks, method_options=options, thresholds=thresholds,
                    seed=seed,
                )  # fmt: skip
                _with_drift(self.model, batch, assessment, thresholds)
                assessments.append(assessment)
        result = self._result(texts, batches, assessments, [*judged, *references], batch_size)
        _warn_unconverged(caught, result.flags, thresholds)
        return result

    def run(
        self,
        dataset: Any,
        out: str | os.PathLike[str],
        *,
        methods: Sequence[str] | None = None,
        target: Target | None = None,
        checks: Sequence[str] = DEFAULT_CHECKS,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        thresholds: Thresholds | None = None,
        batch_size: int = 8,
        limit: int | None = None,
        text_column: str = "text",
        label_column: str | None = None,
        max_length: int | None = None,
        sample: int = 8,
        seed: int = 0,
        progress: bool = True,
        engine: str = "local",
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0.0,
    ) -> Any:
        """:meth:`explain` a whole dataset into the run directory ``out``, one chunk per batch; resumable.

        ``dataset``: anything :func:`attn_probe.data.load_texts` reads (a CSV / TSV / JSONL / Parquet path, a
        DataFrame, a list of strings, a ``datasets.Dataset``), with ``text_column`` and optional
        ``label_column`` (labels are checked against the model's classes). Started again after any
        interruption (``kill -9`` included), the same call skips the examples already written; a directory
        made by another model, dataset or settings is refused. Tables: ``examples``, ``scores``, ``findings``,
        ``attention`` (per example, layer and head: entropy, shares on special / first / own token, distance),
        ``flags`` (integrated gradients' convergence delta per example, the capture's drift per batch: see
        :mod:`attn_probe.findings.flags`) and one per comparison; the full attention matrices of ``sample``
        randomly chosen examples (float16). The manifest's ``extra`` holds the largest capture drift and the
        flagged counts over the whole run (:func:`attn_probe.findings.flags.flag_summary`). Returns the run
        (:class:`attn_probe.store.Run`, read it with ``.table(name)``).

        ``engine``: ``"local"`` (this process, batch after batch) or ``"ray"``: the batches are shared among
        ``workers`` Ray actors (default: one per CPU of the cluster), each loading the model once (on
        ``gpus_per_worker`` GPUs each); ``address`` joins an existing cluster (None: the running Ray, else a local
        one). Either way this process writes the run directory, and the tables are the same; a worker that dies has
        its batch retried (:mod:`attn_probe.engines.ray_engine`).

        Example::

            run = probe.run("reviews.csv", out="runs/reviews", label_column="label", limit=200)
            findings = run.table("findings")
        """
        from attn_probe.data import load_texts
        from attn_probe.store import Run, model_fingerprint, select_sample

        texts = load_texts(dataset, text_column=text_column, label_column=label_column, limit=limit)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if label_column is not None:
            texts["label"] = self._class_ids(texts["label"])
        judged, references = split_methods(methods if methods is not None else DEFAULT_METHODS)
        thresholds = thresholds or Thresholds()
        identity = {
            "model": self.name,
            "fingerprint": model_fingerprint(self.model),
            "data": _data_fingerprint(texts),
            "methods": [*judged, *references],
            "target": "default (predicted class / top next token)" if target is None else repr(target),
            "checks": list(checks),
            "options": {k: dict(v) for k, v in (options or {}).items()},
            "thresholds": asdict(thresholds),
            "max_length": max_length,
            "seed": seed,
            "sample": sample,
        }
        settings = {"source": str(dataset) if isinstance(dataset, str | os.PathLike) else type(dataset).__name__,
                    "batch_size": batch_size, "text_column": text_column, "label_column": label_column}  # fmt: skip
        settings["engine"] = engine
        plan = RunPlan(
            judged=judged, references=references, target=target, checks=tuple(checks),
            options={k: dict(v) for k, v in (options or {}).items()}, thresholds=thresholds, max_length=max_length,
            seed=seed, sampled=frozenset(select_sample(texts["example_id"], sample, seed)),
        )  # fmt: skip
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if engine == "ray":
            from attn_probe.engines.ray_engine import RayOptions, check_ray

            check_ray()  # before the run directory is touched: a missing extra costs nothing
            ray_options = RayOptions.of(address=address, workers=workers, gpus_per_worker=gpus_per_worker)
        run = Run.open(out, identity, settings)
        caught: list[warnings.WarningMessage] = []
        session_flags: list[pd.DataFrame] = []
        try:
            todo = texts[~texts["example_id"].isin(run.done())]
            shards = [todo.iloc[start : start + batch_size] for start in range(0, len(todo), batch_size)]
            if engine == "ray":
                from attn_probe.engines.ray_engine import run_shards_on_ray

                results = run_shards_on_ray(self, shards, plan, ray_options, identity["fingerprint"], progress)
            else:
                results = (self.explain_shard(part, plan) for part in _progress(shards, self.name, progress))
            for shard in results:
                run.write(shard.ids, shard.tables, samples=shard.samples)
                caught += shard.caught
                if "flags" in shard.tables:
                    session_flags.append(shard.tables["flags"])
            whole = run.table("flags") if "flags" in run.tables() else empty_flags()  # earlier sessions too
            run.finish({"examples": len(texts), "model": self.name, **flag_summary(whole, thresholds)})
        finally:
            run.close()
        _warn_unconverged(caught, concat_flags(session_flags), thresholds)
        return run

    def explain_shard(self, part: pd.DataFrame, plan: RunPlan) -> ShardResult:
        """One batch of a dataset run: ``part`` (rows ``example_id, text`` and maybe ``label``) explained and
        judged as ``plan`` says, as the tables and sampled matrices a run writes for it (example ids of the
        dataset). Every engine calls this: the local loop, and each Ray worker."""
        from attn_probe.store import summarise_batch

        ids = [int(i) for i in part["example_id"]]
        batch = self.tokenize(list(part["text"]), max_length=plan.max_length)
        caught: list[warnings.WarningMessage] = []
        with _gathering_convergence_warnings(caught):
            assessment = assess(
                self.model, batch, tokenizer=self.tokenizer, target=plan.target, attention_methods=plan.judged,
                reference_methods=plan.references, checks=plan.checks, method_options=plan.options,
                thresholds=plan.thresholds, seed=plan.seed,
            )  # fmt: skip
        captured = _with_drift(self.model, batch, assessment, plan.thresholds)
        result = self._result(list(part["text"]), [batch], [assessment], plan.methods, len(ids))
        tables = {
            "examples": _with_labels(result.examples, part),
            "scores": result.scores,
            "findings": result.findings,
            **result.evidence,
        }
        if not result.flags.empty:
            tables["flags"] = result.flags
        weights = captured.weights  # [b, L, H, n, n]
        tables["attention"] = summarise_batch(
            weights.float().cpu().numpy(), list(range(len(ids))), batch.special_tokens_mask.cpu().numpy(),
            batch.attention_mask.bool().cpu().numpy(),
        )  # fmt: skip
        tables = {name: _relabel(table, ids) for name, table in tables.items()}
        real = batch.attention_mask.bool()
        samples = {
            "attention": {
                ids[i]: weights[i][..., real[i], :][..., real[i]].cpu()
                for i in range(len(ids))
                if ids[i] in plan.sampled
            }
        }
        return ShardResult(ids=ids, tables=tables, samples=samples, caught=caught)

    def _class_ids(self, labels: pd.Series) -> pd.Series:
        """Labels as class indices of this model: ints in range, or names of its ``id2label`` (any case)."""
        config = getattr(self.model, "config", None)
        num_labels = getattr(config, "num_labels", None) or getattr(config, "num_classes", None)  # HF, or ours
        names = {str(v).lower(): int(k) for k, v in (getattr(config, "id2label", None) or {}).items()}
        known = ", ".join(sorted(names)) or (f"0..{num_labels - 1}" if num_labels else "class indices")
        out = []
        for row, label in enumerate(labels):
            if isinstance(label, str) and label.strip().lower() in names:
                out.append(names[label.strip().lower()])
                continue
            index = _whole_number(label)
            if index is None:
                raise ValueError(f"label {label!r} (row {row}) is not a class of this model ({known})")
            if num_labels is not None and not 0 <= index < num_labels:
                raise ValueError(f"label {label!r} (row {row}) is outside this model's classes 0..{num_labels - 1}")
            out.append(index)
        return pd.Series(out, index=labels.index, dtype="int64")

    # ------------------------------------------------------------------------------------------------
    def _result(
        self,
        texts: list[str],
        batches: list[TokenizedBatch],
        assessments: list[Assessment],
        methods: list[str],
        batch_size: int,
    ) -> ProbeResult:
        examples, scores, findings, flags = [], [], [], []
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
                        "prediction": _predictions(self.model, batch, assessment, first).tolist(),
                    }
                )
            )
            for explanation in assessment.explanations.values():
                frame = explanation.to_frame(batch)
                frame["target"] = [descriptions[i] for i in frame["example_id"]]
                scores.append(_shift(frame, offset))
            findings.append(_shift(assessment.findings, offset))
            flags.append(_shift(assessment.flags, offset))
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
            flags=concat_flags(flags),
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


def _progress(shards: list[pd.DataFrame], name: str, shown: bool) -> Any:
    """``shards`` with a progress bar when ``shown``."""
    if not shown:
        return shards
    from tqdm.auto import tqdm

    return tqdm(shards, desc=f"attn-probe {name}", unit="batch")


def _whole_number(label: Any) -> int | None:
    """``label`` as a class index if it is a whole number (1, "1", 1.0); None for 1.5, True, "pos", ..."""
    if isinstance(label, bool):
        return None
    try:
        value = float(label)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else None


def _predictions(model: nn.Module, batch: TokenizedBatch, assessment: Assessment, first: Explanation) -> torch.Tensor:
    """``[b]`` what the model predicts (its argmax class, or top next token at the target's position), which is
    the explained class only when the target was left to the model."""
    target = first.target
    if target.chosen_by_model:
        return target.ids.cpu()
    if assessment.captured is not None and assessment.captured.logits is not None:
        logits = assessment.captured.logits
    else:
        with torch.no_grad():
            device = next(model.parameters()).device
            outputs = model(**{k: v.to(device) for k, v in batch.model_inputs().items()})
            logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
    logits = logits.detach()
    if logits.dim() == 3:  # a language model: the row of each example's predicting position
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits = logits[rows, target.positions.to(logits.device)]
    return logits.argmax(dim=-1).cpu()


def _data_fingerprint(texts: pd.DataFrame) -> dict[str, Any]:
    """What identifies a dataset in a run's identity: its size and a sha256 of its texts (and labels)."""
    digest = hashlib.sha256()
    for row in texts.itertuples(index=False):
        digest.update(json.dumps([str(row.text), str(getattr(row, "label", ""))]).encode())
    return {"examples": len(texts), "sha256": digest.hexdigest()}


def _with_labels(examples: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
    if "label" not in part:
        return examples
    labelled = examples.copy()
    labelled["label"] = part["label"].to_numpy()
    labelled["correct"] = labelled["prediction"] == labelled["label"]
    return labelled


def _relabel(table: pd.DataFrame, ids: list[int]) -> pd.DataFrame:
    """A batch's table with its example ids (0 .. b-1 within the batch) mapped to the dataset's ids."""
    if "example_id" not in table:
        return table
    relabelled = table.copy()
    # an array, not a list: an empty list would make the column `object`, which the store refuses
    relabelled["example_id"] = np.asarray([ids[int(i)] for i in relabelled["example_id"]], dtype=np.int64)
    return relabelled


def _with_drift(
    model: nn.Module, batch: TokenizedBatch, assessment: Assessment, thresholds: Thresholds
) -> AttentionCapture:
    """The batch's capture: the assessment's shared one when its methods or checks made one, a capture of its
    own otherwise, whose drift is then added to ``assessment.flags`` (so that every batch's drift is measured)."""
    if assessment.captured is not None:
        return assessment.captured
    captured = capture(model, batch, keep_values=False)
    measured = captured.drift_per_example if captured.drift_per_example is not None else captured.drift
    drift = drift_flags(len(batch), measured, thresholds, captured.logits)
    assessment.flags = concat_flags([assessment.flags, drift])
    return captured


@contextmanager
def _gathering_convergence_warnings(caught: list[warnings.WarningMessage]) -> Iterator[None]:
    """Inside: integrated gradients' :class:`ConvergenceWarning` is kept in ``caught`` (one summary follows,
    :func:`_warn_unconverged`) instead of shown once per batch; every other warning is shown as before.

    Only ``warnings.showwarning`` is swapped, not the filters: a warning the filters ignore never arrives, one
    they turn into an error still raises, and "once per location" still holds."""
    shown = warnings.showwarning

    def keep(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConvergenceWarning):
            caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = keep
    try:
        yield
    finally:
        warnings.showwarning = shown


def _warn_unconverged(caught: list[warnings.WarningMessage], flags: pd.DataFrame, thresholds: Thresholds) -> None:
    """One :class:`ConvergenceWarning` for the integrated-gradients warnings gathered over a call's batches."""
    if not caught:
        return
    rows = flags[flags["check"] == IG_CHECK] if not flags.empty else flags
    bad = rows[rows["flagged"].astype(bool)] if not rows.empty else rows
    line = thresholds.ig_relative_convergence_delta
    if bad.empty:
        text = (
            f"integrated gradients warned {len(caught)} time(s) at its own delta_tolerance, though no example is "
            f"above the flag threshold ig_relative_convergence_delta = {line:.1%}; the first warning: "
            f"{caught[0].message}"
        )
    else:
        ids = sorted({int(i) for i in bad["example_id"]})
        shown = ", ".join(str(i) for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        text = (
            f"integrated gradients did not converge for {len(ids)} of {rows['example_id'].nunique()} examples "
            f"({shown}): relative convergence delta up to {bad['value'].max():.1%}, threshold {line:.1%}; findings "
            "judged against it there are less reliable. Raise its n_steps (options={'integrated_gradients': "
            "{'n_steps': ...}}); every example's delta is in the flags table"
        )
    warnings.warn(text, ConvergenceWarning, stacklevel=3)


def _shift(frame: pd.DataFrame, offset: int) -> pd.DataFrame:
    if "example_id" not in frame or offset == 0:
        return frame
    shifted = frame.copy()
    shifted["example_id"] = shifted["example_id"] + offset
    return shifted


__all__ = ["CHECKS", "DEFAULT_CHECKS", "DEFAULT_METHODS", "Probe", "ProbeResult", "method_table", "split_methods"]
