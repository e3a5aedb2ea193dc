"""What the dashboard shows, prepared without Streamlit: pure pandas / numpy / torch, so tests can check the
numbers a page shows against the library without a browser.

- :class:`ExampleData`: one example as the example view draws it (its scores, findings, evidence and attention),
  from a typed text (:func:`example_from_result`) or from a run directory (:func:`example_from_run`);
- :func:`example_table` / :func:`filter_findings`: a run's examples with their findings, under the page's filters;
- :func:`head_grid`: one number per (layer, head) of an example's evidence, for the layer x head heatmaps;
- the position study's result tables (:func:`study_tables`) and small models trained on its synthetic tasks
  (:func:`train_variant`, :func:`synthetic_tokens`) for the content-vs-position view of a head's logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attn_probe.report import misleading_ranking

OWN_TABLES = ("examples", "scores", "findings", "attention")  # a run's tables that are not comparison evidence
POSITION_STUDY = "position_variants"
VARIANT_STUDIES = {  # studies whose results compare variants of our models with the same tables
    "position_variants": "position variants (none, learned, sinusoidal, Shaw, T5, ALiBi, rotary)",
    "efficient_attention": "attention kinds (full, sliding window, linear)",
}
STUDY_FILES = ("accuracy", "recovery", "gaps", "distance_profile", "layer_position")
SYNTHETIC_TASKS = ("marked", "offset", "pair")
LOGIT_VARIANTS = ("none", "shaw", "t5", "alibi", "rotary")  # variants whose logits split into content + position


# ----------------------------------------------------------------------------------------------------
# one example
# ----------------------------------------------------------------------------------------------------
@dataclass
class ExampleData:
    """One example, as the example view shows it. Every table holds this example's rows only."""

    model: str
    example_id: int
    examples: pd.DataFrame  # one row: example_id, text, n_tokens, target, prediction (+ label, correct)
    scores: pd.DataFrame  # example_id, method, token_index, token, special, score, target
    findings: pd.DataFrame  # attn_probe.findings.FINDING_COLUMNS
    evidence: dict[str, pd.DataFrame] = field(default_factory=dict)  # comparison tables (agreement, sinks, ...)
    methods: list[str] = field(default_factory=list)  # in the order the run / result lists them
    attention: np.ndarray | None = None  # [layers, heads, n, n] over the real tokens; None when not kept
    notes: list[str] = field(default_factory=list)  # warnings raised while explaining (truncation, no content)

    @property
    def row(self) -> pd.Series:
        return self.examples.iloc[0]

    @property
    def tokens(self) -> list[str]:
        first = self.scores.drop_duplicates("token_index").sort_values("token_index")
        return [str(token) for token in first["token"]]

    @property
    def special(self) -> list[bool]:
        first = self.scores.drop_duplicates("token_index").sort_values("token_index")
        return [bool(s) for s in first["special"]] if "special" in first else [False] * len(first)

    def score_table(self) -> pd.DataFrame:
        """Methods x tokens: the raw scores (columns ``"{index}: {token}"``, so repeated tokens stay apart)."""
        table = self.scores.pivot_table(index="method", columns="token_index", values="score", aggfunc="first")
        order = [m for m in self.methods if m in table.index] or list(table.index)
        table = table.reindex(order)
        table.columns = [f"{index}: {token}" for index, token in zip(table.columns, self.tokens, strict=True)]
        table.index.name = "method"
        return table


def example_from_result(result: Any, example_id: int = 0) -> ExampleData:
    """``example_id`` of a :class:`~attn_probe.ProbeResult` (what ``Probe.explain`` returned)."""
    if example_id not in set(result.examples["example_id"]):
        raise ValueError(f"the result has no example {example_id}; it has {sorted(result.examples['example_id'])}")
    offset = 0
    attention = None
    for batch, assessment in zip(result.batches, result.assessments, strict=True):
        if offset <= example_id < offset + len(batch):
            captured = assessment.captured
            if captured is not None:
                real = batch.attention_mask[example_id - offset].bool().cpu()
                weights = captured.weights[example_id - offset].detach().float().cpu()  # [L, H, n, n] padded
                attention = weights[..., real, :][..., real].numpy()
            break
        offset += len(batch)
    return ExampleData(
        model=result.model_name,
        example_id=example_id,
        examples=_rows_of(result.examples, example_id),
        scores=_rows_of(result.scores, example_id),
        findings=_rows_of(result.findings, example_id),
        evidence={name: _rows_of(table, example_id) for name, table in result.evidence.items()},
        methods=[str(m) for m in result.methods["id"]] if "id" in result.methods else [],
        attention=attention,
    )


def example_from_run(run: Any, example_id: int) -> ExampleData:
    """``example_id`` of a run directory (:class:`attn_probe.store.Run`): read from its tables, no model needed.
    The full attention is there only for the run's sampled examples (``Probe.run(sample=...)``)."""
    if example_id not in run.done():
        raise ValueError(f"run {run.path} has no example {example_id}; it has {len(run.done())} examples")
    ids = [int(example_id)]
    names = run.tables()
    evidence = {}
    for name in names:
        if name in ("examples", "scores", "findings"):
            continue
        table = run.table(name, example_ids=ids)
        if "example_id" in table:
            evidence["attention_summary" if name == "attention" else name] = table
    sampled = run.samples("attention")
    attention = np.asarray(run.sample("attention", example_id), dtype=np.float32) if example_id in sampled else None
    identity = run.identity or {}
    return ExampleData(
        model=str(identity.get("model") or "unknown model"),
        example_id=int(example_id),
        examples=run.table("examples", example_ids=ids) if "examples" in names else pd.DataFrame(),
        scores=run.table("scores", example_ids=ids) if "scores" in names else pd.DataFrame(),
        findings=run.table("findings", example_ids=ids) if "findings" in names else pd.DataFrame(),
        evidence=evidence,
        methods=[str(m) for m in identity.get("methods") or []],
        attention=attention,
    )


def _rows_of(table: pd.DataFrame, example_id: int) -> pd.DataFrame:
    if "example_id" not in table:
        return table
    return table[table["example_id"] == example_id].reset_index(drop=True)


def head_grid(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """``layer, head, value`` (mean over every other column: reference methods, examples) of a per-head table,
    e.g. ``head_agreement`` with ``kendall_tau`` or ``sinks`` with ``special_share``; rows without a head
    (per-layer rows) are left out."""
    missing = [column for column in ("layer", "head", value) if column not in table]
    if missing:
        raise ValueError(f"the table lacks {missing}; it has {list(table.columns)}")
    rows = table.dropna(subset=["layer", "head"])
    if "level" in rows:
        rows = rows[rows["level"].astype(str) == "head"] if (rows["level"].astype(str) == "head").any() else rows
    rows = rows.astype({"layer": int, "head": int})
    return rows.groupby(["layer", "head"], as_index=False)[value].mean()


# ----------------------------------------------------------------------------------------------------
# a run: filters and the example table
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFilters:
    """What the run page filters on; an empty selection means \"all\"."""

    findings: tuple[str, ...] = ()
    labels: tuple[Any, ...] = ()
    length: tuple[int, int] | None = None  # n_tokens, inclusive
    layers: tuple[int, ...] = ()  # restricts per-layer and per-head findings; per-example ones are kept
    heads: tuple[int, ...] = ()  # restricts per-head findings
    holding_only: bool = False  # keep only examples where a selected finding holds


def filter_findings(findings: pd.DataFrame, filters: RunFilters) -> pd.DataFrame:
    """The findings rows the filters keep (finding kind, and layer / head for the rows that have them)."""
    rows = findings
    if filters.findings:
        rows = rows[rows["finding"].isin(filters.findings)]
    if filters.layers:
        rows = rows[rows["layer"].isna() | rows["layer"].isin(filters.layers)]
    if filters.heads:
        rows = rows[rows["head"].isna() | rows["head"].isin(filters.heads)]
    return rows


def example_table(examples: pd.DataFrame, findings: pd.DataFrame, filters: RunFilters = RunFilters()) -> pd.DataFrame:
    """One row per example the filters keep: ``example_id, text, n_tokens, [label, prediction, correct],
    judged, holding, share_holding, misleading`` — ``judged`` / ``holding`` count the (filtered) findings rows
    that could be judged / that hold; ``misleading`` is the report's ranking score (the mean over finding kinds
    of the share of judged rows that hold). Sorted most misleading first."""
    chosen = examples
    if filters.labels and "label" in chosen:
        chosen = chosen[chosen["label"].isin(filters.labels)]
    if filters.length is not None:
        low, high = filters.length
        chosen = chosen[chosen["n_tokens"].between(low, high)]
    rows = filter_findings(findings, filters)
    rows = rows[rows["example_id"].isin(chosen["example_id"])]
    judged = rows[rows["holds"].notna()]
    counts = judged.assign(holds=judged["holds"].astype(bool)).groupby("example_id")["holds"].agg(["size", "sum"])
    ranking = misleading_ranking(rows) if not rows.empty else pd.DataFrame()
    columns = [c for c in ("example_id", "text", "n_tokens", "label", "prediction", "correct") if c in chosen]
    table = chosen[columns].copy()
    table["judged"] = table["example_id"].map(counts["size"]).fillna(0).astype(int)
    table["holding"] = table["example_id"].map(counts["sum"]).fillna(0).astype(int)
    table["share_holding"] = np.where(table["judged"] > 0, table["holding"] / table["judged"].clip(lower=1), np.nan)
    table["misleading"] = table["example_id"].map(ranking["score"]) if not ranking.empty else np.nan
    if filters.holding_only:
        table = table[table["holding"] > 0]
    return table.sort_values(["misleading", "example_id"], ascending=[False, True], na_position="last").reset_index(
        drop=True
    )


def default_example(examples: pd.DataFrame, findings: pd.DataFrame | None) -> int | None:
    """The example a run opens on: the most misleading one (the report's ranking), else the smallest id."""
    if findings is not None and not findings.empty:
        ranking = misleading_ranking(findings)
        if not ranking.empty:
            return int(ranking.index[0])
    return int(examples["example_id"].min()) if len(examples) else None


# ----------------------------------------------------------------------------------------------------
# the position study and its synthetic models
# ----------------------------------------------------------------------------------------------------
def study_folder(root: str | Path | None = None, name: str = POSITION_STUDY) -> Path:
    """Where a variant study's results are: ``root``, else ``analyses/results/<name>`` of the repository this
    dashboard runs from."""
    if root is not None:
        return Path(root)
    return Path(__file__).resolve().parent.parent / "analyses" / "results" / name


def study_tables(folder: str | Path, name: str = POSITION_STUDY) -> dict[str, pd.DataFrame]:
    """The study's CSV tables (``accuracy, recovery, gaps, distance_profile, layer_position``) by name."""
    folder = Path(folder)
    missing = [table for table in STUDY_FILES if not (folder / f"{table}.csv").is_file()]
    if missing:
        raise FileNotFoundError(
            f"no {name} results in {folder} (missing {', '.join(m + '.csv' for m in missing)}): run "
            f"`python -m analyses.{name}` from the repository root (or `--smoke` for a quick version)"
        )
    return {table: pd.read_csv(folder / f"{table}.csv") for table in STUDY_FILES}


def synthetic_task(name: str) -> Any:
    """The study's task ``name`` (``marked``, ``offset`` or ``pair``), as the study builds it."""
    from attn_probe.data.synthetic import MarkedToken, OffsetToken, TokenPair

    tasks: dict[str, Callable[[], Any]] = {
        "marked": MarkedToken,
        "offset": lambda: OffsetToken(offset=2),
        "pair": lambda: TokenPair(rule="xor"),
    }
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(tasks)}")
    return tasks[name]()


def train_variant(
    variant: str,
    task_name: str,
    *,
    steps: int = 300,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Any, Any]:
    """One small encoder of the study's shape (2 layers x 4 heads, width 32) with position ``variant``, trained
    on ``task_name``: ``(model, training report)``. Deterministic under ``seed``."""
    import torch

    from attn_probe.attention.models import TransformerConfig
    from attn_probe.attention.training import build_model, train

    if variant not in LOGIT_VARIANTS:
        raise ValueError(
            f"variant {variant!r} adds position at the embeddings, so a head's logits do not split into content "
            f"and position; choose one of {', '.join(LOGIT_VARIANTS)}"
        )
    task = synthetic_task(task_name)
    config = TransformerConfig(
        vocab_size=task.vocab_size, embed_dim=32, num_heads=4, num_layers=2, ffn_dim=64, position=variant,
        num_classes=task.num_classes,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and steady on a shared machine
    try:
        model = build_model(config, task, seed=seed)
        report = train(model, task, steps=steps, seed=seed, on_step=on_step)
    finally:
        torch.set_num_threads(threads)
    return model, report


def synthetic_example(task_name: str, seed: int = 0) -> Any:
    """One held-out example of the task (a ``SyntheticBatch`` of size 1, drawn from ``20_000 + seed``)."""
    import torch

    generator = torch.Generator().manual_seed(20_000 + seed)
    return synthetic_task(task_name).sample(1, generator)


def synthetic_tokens(example: Any, task: Any) -> list[str]:
    """Readable names of the first example's tokens of a synthetic task: ``[CLS]``, ``[SEP]``, the task's
    markers (``M3``) and other tokens (``t12``), padding dropped; ``*`` marks a decisive token (``relevant``) and
    ``^`` a cue (a token that says where to look)."""
    from attn_probe.attention.toy_tasks import CLS, PAD, SEP

    names = {CLS: "[CLS]", SEP: "[SEP]", PAD: "[PAD]"}
    markers = {int(i) for i in getattr(task, "marker_ids", ())}
    real = example.attention_mask[0].bool()
    ids = example.input_ids[0][real].tolist()
    relevant = example.relevant[0][real].tolist()
    cues = example.cues[0][real].tolist() if getattr(example, "cues", None) is not None else [False] * len(ids)
    out = []
    for token_id, decisive, cue in zip(ids, relevant, cues, strict=True):
        name = names.get(token_id, f"M{token_id}" if token_id in markers else f"t{token_id}")
        out.append(name + ("*" if decisive else "") + ("^" if cue else ""))
    return out


def logit_heatmap_frame(parts: Any, valid: Any, layer_parts_index: int, head: int, tokens: list[str]) -> pd.DataFrame:
    """Tidy ``part, query, key, query_token, key_token, logit`` of one head's total / content / position logits
    for the first example (valid pairs only); ``parts`` and ``valid`` as :func:`attn_probe.compare.logit_parts`
    returns them."""
    part = parts[layer_parts_index]
    keep = valid[0, 0].cpu().numpy()
    rows = []
    for name in ("total", "content", "position"):
        matrix = getattr(part, name)[0, head].detach().double().cpu().numpy()
        for q in range(matrix.shape[0]):
            for k in range(matrix.shape[1]):
                if keep[q, k]:
                    rows.append((name, q, k, tokens[q], tokens[k], float(matrix[q, k])))
    return pd.DataFrame(rows, columns=["part", "query", "key", "query_token", "key_token", "logit"])


def finite_or_none(value: Any) -> float | None:
    """A number for display: None for NaN / missing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def attention_frame(attention: np.ndarray, layer: int, head: int, tokens: Sequence[str]) -> pd.DataFrame:
    """Tidy ``query, key, query_token, key_token, query_label, key_label, weight`` of one head of
    ``attention [layers, heads, n, n]`` (labels ``"3: movie"`` keep repeated tokens apart)."""
    layers, heads, n, _ = attention.shape
    if not (0 <= layer < layers and 0 <= head < heads):
        raise ValueError(f"no layer {layer} / head {head}: the model has layers 0..{layers - 1}, heads 0..{heads - 1}")
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens for a {n} x {n} attention matrix")
    query, key = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    labels = [f"{i}: {token}" for i, token in enumerate(tokens)]
    return pd.DataFrame(
        {
            "query": query.ravel(),
            "key": key.ravel(),
            "query_token": [tokens[i] for i in query.ravel()],
            "key_token": [tokens[j] for j in key.ravel()],
            "query_label": [labels[i] for i in query.ravel()],
            "key_label": [labels[j] for j in key.ravel()],
            "weight": attention[layer, head].astype(np.float64).ravel(),
        }
    )
