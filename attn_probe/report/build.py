"""The analysis report of a run directory: one standalone HTML page and its Markdown twin.

    from attn_probe.report import write_report
    paths = write_report("runs/demo")                   # runs/demo/report/report.html, report.md, figures/
    paths = write_report(run, "out/", formats=("html",))

Sections: (1) what was run (model, data, methods with their family and sign, checks, thresholds, target,
versions, timing, accuracy); (2) the headline findings in sentences, and where attention is a fair explanation;
(3) figures (head and method agreement, faithfulness, sinks, attention by distance, counterfactual attention,
how often each finding holds), each titled with the model and target; (4) a gallery of the examples where
attention misleads most and where it is faithful, tokens coloured by every method; (5) caveats: what the methods
assume, whether the numbers can be trusted (integrated gradients' convergence, the capture's drift from the model's
own attention backend: the ``flags`` table, and which headline numbers rest on a flagged result; the headlines say
so too), how much data there is, and bootstrap intervals (examples resampled) beside the Wilson intervals. A
section whose table the run lacks is replaced by a one-line note. Everything taken from the data is escaped.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attn_probe.report import figures
from attn_probe.report.document import (
    Block,
    Bullets,
    Document,
    Facts,
    Heading,
    Paragraph,
    Plot,
    Section,
    Table,
    TokenView,
    render_html,
    render_markdown,
)
from attn_probe.report.stats import bootstrap_shares, finding_level

FORMATS = ("html", "md")
REPORT_FOLDER = "report"
FIGURES_FOLDER = "figures"
GALLERY_TOKENS = 60  # tokens shown per example in the HTML gallery
DISTANCE_SAMPLES = 16  # sampled attention matrices read for the distance profile
DISTANCE_MAX = 16  # |d| beyond this pooled into the end bins
_DPI = 110
_JUDGED_FAMILIES = ("attention", "hybrid")
_REFERENCE_FAMILIES = ("gradient", "perturbation")
_ROLES = {
    "judged": "judged (attention-derived)",
    "reference": "reference (gradient / perturbation)",
    "other": "other (method not registered here)",
}
_ASSUMES = {
    "attention": "reads importance off attention weights (alone, rolled out, or with value norms): assumes "
    "what the target position attends to is what the model uses",
    "hybrid": "weights attention by its gradient: assumes attention is the route and inherits the gradient's "
    "local, first-order view",
    "gradient": "local and first-order: assumes the target is close to linear in the token embeddings around the "
    "input (or along the path from the [MASK]/pad baseline)",
    "perturbation": "assumes replacing or removing a token is a neutral removal; the altered input can be unlike "
    "any training text and move the output for other reasons",
}


# ----------------------------------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------------------------------
def write_report(
    run_or_path: Any,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    formats: str | Sequence[str] = FORMATS,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the report of a run: ``report.html`` (standalone) and/or ``report.md`` with ``figures/*.png|svg``.

    ``run_or_path``: a :class:`~attn_probe.store.Run` or a run directory (read-only; a bad one raises the store's
    ``NotARunError``, a ``ValueError``). ``out_dir``: default ``<run>/report/``. ``formats``: ``"html"``,
    ``"md"`` or both (``"both"`` too). ``resamples`` / ``seed``: the bootstrap of the caveats section. Every
    file is written atomically (a temporary file renamed into place). Returns ``{"html": path, "md": path,
    "figures": folder}`` for what was written.
    """
    from attn_probe.store import Run, load_run
    from attn_probe.store.chunks import atomic_write_bytes

    chosen = _formats(formats)
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    out = Path(out_dir) if out_dir is not None else Path(run.path) / REPORT_FOLDER
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: choose a directory for the report")
    document = build_report(run, resamples=resamples, seed=seed, svg="md" in chosen)
    written: dict[str, Path] = {}
    if "md" in chosen:
        folder = out / FIGURES_FOLDER
        names = set()
        for plot in document.plots():
            atomic_write_bytes(folder / f"{plot.name}.png", plot.png)
            atomic_write_bytes(folder / f"{plot.name}.svg", plot.svg)
            names.update({f"{plot.name}.png", f"{plot.name}.svg"})
        _remove_stale_figures(folder, names)
        atomic_write_bytes(out / "report.md", render_markdown(document, FIGURES_FOLDER).encode("utf-8"))
        written["md"] = out / "report.md"
        written["figures"] = folder
    if "html" in chosen:
        atomic_write_bytes(out / "report.html", render_html(document).encode("utf-8"))
        written["html"] = out / "report.html"
    return {key: written[key] for key in ("html", "md", "figures") if key in written}


def build_report(run: Any, *, resamples: int = 1000, seed: int = 0, svg: bool = True) -> Document:
    """The report of ``run`` as a :class:`~attn_probe.report.document.Document` (not yet rendered to HTML or
    Markdown; its figures are, as PNG and, with ``svg``, SVG)."""
    data = _RunData(run, svg=svg)
    sections = [
        _what_was_run(data),
        _headlines(data),
        _figures(data),
        _gallery(data),
        _caveats(data, resamples=resamples, seed=seed),
    ]
    subtitle = (
        f"Is the attention of {data.model} telling what the model used? Run {data.path}, "
        f"{data.n_examples} examples, target: {data.target}."
    )
    return Document(title=f"attn_probe report: {data.model}", subtitle=subtitle, sections=sections)


# ----------------------------------------------------------------------------------------------------
# what the report reads
# ----------------------------------------------------------------------------------------------------
class _RunData:
    """The run's manifest and tables, each read once (absent tables are None)."""

    def __init__(self, run: Any, *, svg: bool = True) -> None:
        self.run = run
        self.svg = svg
        self.path = str(run.path)
        self.manifest = run.manifest
        self.identity = self.manifest.get("identity") or {}
        self.settings = self.manifest.get("settings") or {}
        self.model = str(self.identity.get("model") or "unknown model")
        self.target = str(self.identity.get("target") or "not recorded")
        self.names = set(run.tables())
        self.n_examples = len(run.done())
        self.methods = [str(m) for m in self.identity.get("methods") or []]
        self._tables: dict[str, pd.DataFrame | None] = {}
        self.method_info = _method_info(self.methods)
        self.references = [m for m in self.methods if self.method_info[m].get("family") in _REFERENCE_FAMILIES]
        self.context = f"model {self.model}; target: {self.target}; {self.n_examples} examples"
        self._dependence: pd.DataFrame | None = None

    def dependence(self) -> pd.DataFrame:
        """Per headline, the judged cases resting on a flagged result (:func:`attn_probe.findings.flag_dependence`)."""
        if self._dependence is None:
            from attn_probe.findings.flags import flag_dependence

            self._dependence = flag_dependence(self.table("findings"), self.table("flags"), self.references)
        return self._dependence

    def table(self, name: str) -> pd.DataFrame | None:
        if name not in self._tables:
            self._tables[name] = self.run.table(name) if name in self.names else None
        return self._tables[name]

    def role(self, method: str) -> str:
        family = self.method_info.get(method, {}).get("family")
        if family in _JUDGED_FAMILIES:
            return _ROLES["judged"]
        return _ROLES["reference"] if family in _REFERENCE_FAMILIES else _ROLES["other"]


def _method_info(methods: Sequence[str]) -> dict[str, dict[str, str]]:
    """Metadata of each method id from :func:`attn_probe.list_methods`; unknown ids get ``unknown``."""
    from attn_probe import list_methods

    known = {row["id"]: {k: str(v) for k, v in row.items()} for row in list_methods().to_dict("records")}
    unknown = {"family": "unknown", "sign": "not recorded (method not registered here)", "description": ""}
    return {method: known.get(method, unknown) for method in methods}


def _note(what: str) -> Paragraph:
    return Paragraph(what, note=True)


def _skipped(table: str, check: str | None = None) -> Paragraph:
    hint = f" (run with the {check} check to get it)" if check else ""
    return _note(f"Skipped: the run has no {table} table{hint}.")


# ----------------------------------------------------------------------------------------------------
# 1. what was run
# ----------------------------------------------------------------------------------------------------
def _what_was_run(data: _RunData) -> Section:
    manifest, identity, settings = data.manifest, data.identity, data.settings
    counted = (identity.get("data") or {}).get("examples") if isinstance(identity.get("data"), dict) else None
    fingerprint = str(identity.get("fingerprint") or "")
    facts = [
        ("Model", data.model + (f" (weights fingerprint {fingerprint[:12]})" if fingerprint else "")),
        ("Data", _data_line(settings, data.n_examples, counted)),
        ("Target", data.target),
        ("Status", f"{manifest.get('status', '?')} ({manifest.get('sessions', '?')} session(s))"),
        ("Created", str(manifest.get("created") or "?")),
        ("Finished", str(manifest.get("finished") or "not finished")),
        ("Elapsed", _duration(manifest.get("elapsed_s"))),
        ("Seed", str(identity.get("seed", "?"))),
        ("Max length", str(identity.get("max_length") or "the model's maximum")),
        (
            "Full attention kept for",
            f"{(manifest.get('counts') or {}).get('samples', {}).get('attention', 0)} examples",
        ),
    ]
    if identity.get("options"):
        facts.append(("Method options", _compact(identity["options"])))
    facts.append(("Numerical checks", _numerical_fact(data)))
    blocks: list[Block] = [Facts(facts)]
    examples = data.table("examples")
    if examples is not None and not examples.empty:
        blocks += _example_facts(examples)
    blocks.append(Heading("Methods"))
    if data.methods:
        rows = [
            [m, data.method_info[m]["family"], data.role(m).split(" (")[0], data.method_info[m]["sign"]]
            for m in data.methods
        ]
        blocks.append(Table(["method", "family", "role", "sign: what a score means"], rows))
        blocks.append(
            Paragraph(
                "Attention-derived (and hybrid) methods are judged; gradient and perturbation methods are the "
                "references they are judged against."
            )
        )
    else:
        blocks.append(_note("The manifest lists no methods."))
    checks = [str(c) for c in identity.get("checks") or []]
    blocks.append(Heading("Checks"))
    blocks.append(Paragraph(", ".join(checks) if checks else "none recorded"))
    tables = sorted(data.names)
    blocks.append(Paragraph("Tables in the run: " + (", ".join(tables) if tables else "none")))
    blocks.append(Heading("Thresholds"))
    blocks.append(_thresholds_table(identity.get("thresholds") or {}))
    versions = manifest.get("versions") or {}
    blocks.append(Heading("Package versions"))
    if versions:
        blocks.append(Table(["package", "version"], [[k, str(v)] for k, v in versions.items()]))
    else:
        blocks.append(_note("No versions recorded."))
    for change in manifest.get("version_changes") or []:
        blocks.append(Paragraph(f"Resumed at {change.get('at')} with versions {_compact(change.get('versions'))}."))
    return Section("run", "What was run", blocks)


def _data_line(settings: dict[str, Any], n_examples: int, counted: Any) -> str:
    source = settings.get("source") or "not recorded"
    text = f"{source}: {n_examples} examples done"
    if counted is not None and counted != n_examples:
        text += f" of {counted}"
    columns = [f"text column {settings['text_column']}"] if settings.get("text_column") else []
    if settings.get("label_column"):
        columns.append(f"label column {settings['label_column']}")
    return text + (f" ({', '.join(columns)})" if columns else "")


def _example_facts(examples: pd.DataFrame) -> list[Block]:
    from attn_probe.findings import wilson_interval

    facts: list[tuple[str, str]] = []
    if "n_tokens" in examples:
        tokens = examples["n_tokens"]
        facts.append(("Tokens per example", f"mean {tokens.mean():.1f}, {int(tokens.min())}-{int(tokens.max())}"))
    if "truncated" in examples:
        facts.append(("Truncated", f"{int(examples['truncated'].sum())} of {len(examples)} examples"))
    if "target" in examples:
        counts = examples["target"].astype(str).value_counts()
        shown = "; ".join(f"{value} ({count})" for value, count in counts.head(4).items())
        facts.append(("Targets explained", shown + (f"; and {len(counts) - 4} more" if len(counts) > 4 else "")))
    if "correct" in examples:
        correct = examples["correct"].astype("boolean").dropna()
        hits, n = int(correct.sum()), len(correct)
        if n:
            low, high = wilson_interval(hits, n)
            facts.append(
                ("Accuracy", f"{hits} of {n} labelled examples predicted as labelled ({hits / n:.0%}, 95% CI "
                             f"{low:.0%}-{high:.0%})")
            )  # fmt: skip
    return [Facts(facts)] if facts else []


def _thresholds_table(values: dict[str, Any]) -> Block:
    from attn_probe.findings.thresholds import Thresholds

    meanings = dict(zip(*Thresholds().to_frame()[["name", "meaning"]].to_numpy().T, strict=True))
    if not values:
        return _note("No thresholds recorded.")
    return Table(["threshold", "value", "meaning"], [[k, str(v), meanings.get(k, "")] for k, v in values.items()])


# ----------------------------------------------------------------------------------------------------
# 2. headlines
# ----------------------------------------------------------------------------------------------------
def _headlines(data: _RunData) -> Section:
    from attn_probe.findings import headlines, summarise

    section = Section("findings", "Headline findings")
    findings = data.table("findings")
    if findings is None:
        section.blocks.append(_skipped("findings"))
        return section
    if findings.empty or findings["holds"].isna().all():
        section.blocks.append(_note("No finding could be judged in this run (was it run with any checks?)."))
        return section
    summary = summarise(findings)
    section.blocks.append(
        Paragraph(
            "Each finding is a way attention can mislead. Each line: how often it holds among the cases where it "
            "could be judged, with a 95% Wilson interval; the rest of those cases are where it does not hold."
        )
    )
    dependence = data.dependence()
    if not dependence.empty:
        section.blocks.append(Paragraph(_caution(data, dependence)))
    ordered = summary.dropna(subset=["share"]).sort_values(["share", "n_assessable"], ascending=[False, False])
    section.blocks.append(
        Bullets([_with_dependence(headlines(pd.DataFrame([row]))[0], row, dependence) for _, row in ordered.iterrows()])
    )
    section.blocks.append(Heading("Where attention is a fair explanation"))
    fair = summary.dropna(subset=["share"])
    fair = fair[fair["share"] < 0.5].sort_values(["share", "n_assessable"], ascending=[True, False])
    if fair.empty:
        section.blocks.append(
            Paragraph("No finding mostly fails: in this run, attention does not pass any of the tests in most cases.")
        )
    else:
        section.blocks.append(
            Paragraph(
                "Findings that mostly do not hold, so attention passes these tests in most judged cases (the count "
                "of cases where it passes is first):"
            )
        )
        items = []
        for _, row in fair.iterrows():
            sentence = _with_dependence(headlines(pd.DataFrame([row]))[0], row, dependence)
            passes = int(row["n_assessable"] - row["n_holds"])
            items.append(f"passes in {passes} of {int(row['n_assessable'])}: {sentence}")
        section.blocks.append(Bullets(items))
    return section


# ----------------------------------------------------------------------------------------------------
# 3. figures
# ----------------------------------------------------------------------------------------------------
def _figures(data: _RunData) -> Section:
    section = Section("figures", "Figures")
    section.blocks.append(
        Paragraph(
            f"Every figure is titled with the model and the target ({data.target}). In the Markdown version each "
            "one is also saved as PNG and SVG beside the report."
        )
    )
    section.blocks += _figure_blocks(data)
    return section


def figure_blocks(run: Any, *, svg: bool = False) -> list[Block]:
    """The report's figures of ``run``: for each topic a :class:`Heading`, then its :class:`Plot` blocks (PNG,
    and SVG with ``svg``) or a one-line note saying why it is skipped. The dashboard shows these too."""
    return _figure_blocks(_RunData(run, svg=svg))


def _figure_blocks(data: _RunData) -> list[Block]:
    blocks: list[Block] = []
    for title, make in (
        ("Each head's agreement with the reference attributions", _head_agreement_plots),
        ("Agreement between all methods", _method_agreement_plots),
        ("Faithfulness: erasing what each method ranks highest", _faithfulness_plots),
        ("Attention sinks: raw vs value-norm weighted", _sinks_plots),
        ("Attention by relative distance", _distance_plots),
        ("Counterfactual attention", _counterfactual_plots),
        ("How often each finding holds", _findings_plots),
    ):
        blocks.append(Heading(title))
        try:
            blocks += make(data)
        except (ValueError, KeyError) as error:  # a table that cannot be drawn: say so, keep the report
            blocks.append(_note(f"Skipped: {' '.join(str(error).split())}"))
    return blocks


def _plot(data: _RunData, name: str, figure: Any, title: str, caption: str) -> Plot:
    png, svg = io.BytesIO(), io.BytesIO()
    figure.savefig(png, format="png", dpi=_DPI)
    if data.svg:
        figure.savefig(svg, format="svg", metadata={"Date": None})
    return Plot(name=name, title=title, caption=caption, png=png.getvalue(), svg=svg.getvalue())


def _head_agreement_plots(data: _RunData) -> list[Block]:
    table = data.table("head_agreement")
    if table is None:
        return [_skipped("head_agreement", "agreement")]
    rows = table[table["level"] == "head"] if "level" in table else table
    blocks: list[Block] = []
    judged = list(dict.fromkeys(rows["method_a"].astype(str))) if "method_a" in rows else [""]
    for index, method in enumerate(judged):
        part = rows[rows["method_a"].astype(str) == method] if method else rows
        references = ", ".join(dict.fromkeys(part["method_b"].astype(str))) if "method_b" in part else "the references"
        figure = figures.head_heatmap_figure(
            part, "kendall_tau", context=f"{method}; {data.context}", label="Kendall tau with the references"
        )
        blocks.append(
            _plot(
                data,
                f"head-agreement-{index}",
                figure,
                f"Kendall tau of each head's {method} with the references",
                f"Kendall tau between each layer x head's target-row attention ({method}) and the references "
                f"({references}), mean over references and examples. Red: the head ranks tokens as the references "
                "do; white: unrelated; blue: the opposite order.",
            )
        )
    return blocks or [_note("Skipped: the head_agreement table has no per-head rows.")]


def _method_agreement_plots(data: _RunData) -> list[Block]:
    table = data.table("agreement")
    if table is None:
        return [_skipped("agreement", "agreement")]
    figure = figures.method_agreement_figure(
        table, "kendall_tau", methods=data.methods or None, context=data.context, label="Kendall tau"
    )
    absolute = bool(table["absolute"].all()) if "absolute" in table else None
    how = " Tokens are ranked by |score|." if absolute else ""
    return [
        _plot(
            data,
            "method-agreement",
            figure,
            "Mean Kendall tau between every pair of methods",
            "Mean Kendall tau between the token rankings of every pair of methods, over examples (special tokens "
            f"left out).{how} 1: the same order; 0: unrelated; -1: reversed.",
        )
    ]


def _faithfulness_plots(data: _RunData) -> list[Block]:
    eraser = data.table("eraser")
    blocks: list[Block] = []
    if eraser is None:
        blocks.append(_skipped("eraser", "erasure"))
    else:
        roles = {m: data.role(m) for m in eraser["method"].astype(str).unique()}
        figure = figures.faithfulness_figure(eraser, roles=roles, context=data.context)
        blocks.append(
            _plot(
                data,
                "faithfulness",
                figure,
                "ERASER comprehensiveness and sufficiency per method",
                "Comprehensiveness: how much the target drops when each method's top tokens are erased (higher "
                "is more faithful). Sufficiency: how much it drops when only those tokens are kept (lower is "
                "more faithful). Means over the erasure bins (the top k% of tokens) and examples.",
            )
        )
        blocks.append(_faithfulness_table(eraser, data.table("flips")))
    curves = data.table("curves")
    if curves is not None:
        blocks.append(
            _plot(
                data,
                "aopc-curves",
                figures.curves_figure(curves, context=data.context),
                "Deletion and insertion curves",
                "The target as tokens are deleted (or inserted) in each method's order; dashed: random orders.",
            )
        )
    else:
        blocks.append(_note("No deletion / insertion curves (AOPC) in this run: the curves table is absent."))
    return blocks


def _faithfulness_table(eraser: pd.DataFrame, flips: pd.DataFrame | None) -> Table:
    means = eraser.groupby("method", sort=False)[["comprehensiveness", "sufficiency"]].mean()
    header = ["method", "comprehensiveness (mean)", "sufficiency (mean)"]
    flip_rows = None
    if flips is not None and {"method", "flip_fraction", "random_flip_k_mean", "n_erasable"} <= set(flips.columns):
        header += ["share of tokens deleted to flip (mean)", "random orders"]
        flips = flips.assign(random_fraction=flips["random_flip_k_mean"] / flips["n_erasable"].replace(0, np.nan))
        flip_rows = flips.groupby("method", sort=False)[["flip_fraction", "random_fraction"]].mean()
    rows = []
    for method, row in means.iterrows():
        cells = [str(method), _fmt(row["comprehensiveness"]), _fmt(row["sufficiency"])]
        if flip_rows is not None:
            flipped = flip_rows.loc[method] if method in flip_rows.index else None
            cells += [_fmt(flipped["flip_fraction"]), _fmt(flipped["random_fraction"])] if flipped is not None else []
        rows.append(cells)
    return Table(header, rows, caption="Means over examples (NaN where nothing could be erased or nothing flipped).")


def _sinks_plots(data: _RunData) -> list[Block]:
    sinks = data.table("sinks")
    if sinks is None:
        return [_skipped("sinks", "sinks")]
    return [
        _plot(
            data,
            "sinks",
            figures.sinks_figure(sinks, context=data.context),
            "Share of attention on special tokens per layer, raw and value-norm weighted",
            "Raw: the share of attention weight on special tokens ([CLS], [SEP], ...). Weighted: the same share of "
            "||alpha v W_O||, what the tokens actually write. A high raw share with a low weighted share is an "
            "attention sink: the head looks there but takes little.",
        )
    ]


def _distance_plots(data: _RunData) -> list[Block]:
    blocks: list[Block] = []
    distance = data.table("distance")
    if distance is not None and {"layer", "distance"} <= set(distance.columns):
        profile = distance.rename(columns={"mean_weight": "share"}) if "share" not in distance else distance
        source = "the distance table"
    else:
        ids = data.run.samples("attention")[:DISTANCE_SAMPLES] if data.run.samples().get("attention") else []
        profile = _distance_profile(data.run, ids) if ids else None
        source = f"the full attention of {len(ids)} sampled examples"
    if profile is not None and not profile.empty:
        blocks.append(
            _plot(
                data,
                "distance",
                figures.distance_figure(profile, context=data.context, source=source),
                "Attention mass by relative distance, per layer",
                f"From {source}: the mean share of a query's attention on the key d tokens away, heads averaged "
                f"(|d| > {DISTANCE_MAX} pooled into the end bins). A peak at -1 or +1 is a previous / next token "
                "head; a flat line is attention that ignores position.",
            )
        )
    else:
        blocks.append(_note("No distance table and no sampled attention matrices: no distance profile."))
    attention = data.table("attention")
    if attention is not None and "mean_distance" in attention:
        high = float(np.nanmax(attention["mean_distance"].to_numpy(float))) if len(attention) else 1.0
        figure = figures.head_heatmap_figure(
            attention,
            "mean_distance",
            context=data.context,
            label="mean |key - query| (tokens)",
            diverging=False,
            limits=(0.0, max(high, 1.0)),
        )
        blocks.append(
            _plot(
                data,
                "mean-distance",
                figure,
                "Mean attention distance per layer and head",
                "The attention-weighted mean distance |key - query| in tokens of each head, over every example: "
                "small = local heads, large = heads that look far (or at [CLS] / [SEP]).",
            )
        )
    else:
        blocks.append(_skipped("attention"))
    return blocks


def _distance_profile(run: Any, ids: Sequence[int]) -> pd.DataFrame:
    """``layer, distance, share`` from sampled full matrices ``[layers, heads, n, n]`` (real tokens only)."""
    mass: np.ndarray | None = None
    queries = 0.0
    for example_id in ids:
        weights = np.asarray(run.sample("attention", example_id), dtype=np.float64)
        if weights.ndim != 4 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] == 0:
            continue
        layers, heads, n = weights.shape[0], weights.shape[1], weights.shape[-1]
        if mass is None:
            mass = np.zeros((layers, 2 * DISTANCE_MAX + 1))
        elif mass.shape[0] != layers:
            continue
        for offset in range(-(n - 1), n):
            column = int(np.clip(offset, -DISTANCE_MAX, DISTANCE_MAX)) + DISTANCE_MAX
            mass[:, column] += np.diagonal(weights, offset=offset, axis1=-2, axis2=-1).sum(axis=(1, 2))
        queries += heads * n
    if mass is None or queries == 0:
        return pd.DataFrame(columns=["layer", "distance", "share"])
    share = mass / queries
    layer, distance = np.meshgrid(np.arange(share.shape[0]), np.arange(-DISTANCE_MAX, DISTANCE_MAX + 1), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "distance": distance.ravel(), "share": share.ravel()})


def _counterfactual_plots(data: _RunData) -> list[Block]:
    table = data.table("counterfactuals")
    if table is None:
        return [_skipped("counterfactuals", "counterfactuals")]
    return [
        _plot(
            data,
            "counterfactuals",
            figures.counterfactual_figure(table, context=data.context),
            "Output change when each layer's attention is replaced",
            "Each layer's attention replaced by a permutation (several seeds), uniform weights, or the "
            "position-only ('frozen') pattern. Left: the total variation distance of the output distribution; "
            "right: the share of predictions that flip. Near 0: the output does not depend on that attention.",
        )
    ]


def _findings_plots(data: _RunData) -> list[Block]:
    from attn_probe.findings import summarise

    findings = data.table("findings")
    if findings is None:
        return [_skipped("findings")]
    summary = summarise(findings)
    if summary["share"].isna().all():
        return [_note("Skipped: no finding could be judged.")]
    return [
        _plot(
            data,
            "findings",
            figures.findings_figure(summary, context=data.context),
            "How often each finding holds",
            "The share of judged cases where each finding holds, with its 95% Wilson interval; n counts the "
            "cases (examples, or example x layer / head).",
        )
    ]


# ----------------------------------------------------------------------------------------------------
# 4. gallery
# ----------------------------------------------------------------------------------------------------
def _gallery(data: _RunData, *, misleading: int = 3, faithful: int = 2) -> Section:
    section = Section("gallery", "Gallery: where attention misleads most, and where it is faithful")
    findings = data.table("findings")
    if "scores" not in data.names:
        section.blocks.append(_skipped("scores"))
        return section
    ranking = misleading_ranking(findings) if findings is not None else pd.DataFrame()
    if ranking.empty:
        section.blocks.append(_note("No finding could be judged per example: the gallery shows the first examples."))
        chosen = [(example_id, "example") for example_id in sorted(data.run.done())[: misleading + faithful]]
    else:
        ordered = list(ranking.index)
        count_bad = min(misleading, max(1, math.ceil(len(ordered) / 2)))
        bad = ordered[:count_bad]
        good = [example_id for example_id in reversed(ordered) if example_id not in bad][:faithful]
        chosen = [(i, "where attention misleads most") for i in bad]
        chosen += [(i, "where attention is most faithful") for i in good]
        section.blocks.append(
            Paragraph(
                "Examples ranked by the share of the findings judged on them that hold (each kind of finding "
                "weighs the same, whatever its number of layers or heads)."
            )
        )
    section.blocks.append(
        Paragraph(
            "Tokens are coloured per method by score / the method's largest |score| on the example: red pushes the "
            "target up (or, for non-negative methods, is ranked high), blue pushes it down; hover a token for its "
            "score. Grey headers are special tokens."
        )
    )
    examples = data.table("examples")
    scores = data.run.table("scores", example_ids=[int(example_id) for example_id, _ in chosen])  # only these
    for example_id, kind in chosen:
        if not (scores["example_id"] == example_id).any():
            section.blocks.append(_note(f"Example {example_id} ({kind}) has no scores."))
            continue
        section.blocks.append(
            token_view(
                int(example_id),
                scores,
                title=f"Example {example_id}: {kind}",
                methods=data.methods,
                findings=findings,
                examples=examples,
                ranking=ranking,
            )
        )
    return section


def misleading_ranking(findings: pd.DataFrame) -> pd.DataFrame:
    """Per example: ``score`` (mean over finding kinds of the share of judged rows that hold), ``kinds``,
    ``kinds_holding``; sorted most misleading first (ties: more kinds judged first, then example id)."""
    subject = findings["subject"] if "subject" in findings else pd.Series(pd.NA, index=findings.index)
    table = findings.assign(level=finding_level(findings), subject=subject.astype("string").fillna(""))
    table = table[table["holds"].notna()]
    if table.empty:
        return pd.DataFrame()
    table = table.assign(holds=table["holds"].astype(bool))
    kinds = table.groupby(["example_id", "finding", "subject", "level"])["holds"].mean().reset_index()
    ranking = kinds.groupby("example_id").agg(
        score=("holds", "mean"), kinds=("holds", "size"), kinds_holding=("holds", lambda s: int((s > 0.5).sum()))
    )
    ranking = ranking.assign(example=ranking.index)
    return ranking.sort_values(["score", "kinds", "example"], ascending=[False, False, True])


def token_view(
    example_id: int,
    scores: pd.DataFrame,
    *,
    title: str | None = None,
    methods: Sequence[str] = (),
    findings: pd.DataFrame | None = None,
    examples: pd.DataFrame | None = None,
    ranking: pd.DataFrame | None = None,
    max_tokens: int = GALLERY_TOKENS,
) -> TokenView:
    """One example's tokens coloured by every method (a :class:`TokenView`), from the tidy tables of a run or a
    :class:`~attn_probe.ProbeResult`: ``scores`` (required), ``findings`` (its statements), ``examples`` (text,
    target, prediction, label) and ``ranking`` (:func:`misleading_ranking`), each optional. ``methods`` orders
    the rows (the scores' own order otherwise)."""
    ranking = ranking if ranking is not None else pd.DataFrame()
    rows = scores[scores["example_id"] == example_id]
    if rows.empty:
        raise ValueError(f"no scores for example {example_id}: is it one of this run's / result's examples?")
    order = [m for m in methods if m in set(rows["method"].astype(str))] or list(
        dict.fromkeys(rows["method"].astype(str))
    )
    table = rows.pivot_table(index="method", columns="token_index", values="score", aggfunc="first")
    table.index = table.index.astype(str)
    table = table.reindex(order)
    first = rows.drop_duplicates("token_index").set_index("token_index")
    tokens = [str(t) for t in first["token"].reindex(table.columns)]
    special = [bool(s) for s in first["special"].reindex(table.columns).fillna(False)] if "special" in first else []
    special = special or [False] * len(tokens)
    scale = table.abs().max(axis=1).replace(0, 1.0)
    normalised = table.div(scale, axis=0)
    shown = min(len(tokens), max_tokens)
    facts: list[tuple[str, str]] = []
    if not ranking.empty and example_id in ranking.index:
        row = ranking.loc[example_id]
        facts.append(
            ("Findings holding", f"{int(row['kinds_holding'])} of {int(row['kinds'])} kinds judged "
                                 f"(mean share holding {row['score']:.0%})")
        )  # fmt: skip
    if examples is not None:
        match = examples[examples["example_id"] == example_id]
        if not match.empty:
            example = match.iloc[0]
            text = str(example.get("text", ""))
            facts.append(("Text", text if len(text) <= 400 else text[:400] + " ..."))
            for column, label in (("target", "Target"), ("prediction", "Prediction"), ("label", "Label")):
                if column in match and pd.notna(example[column]):
                    facts.append((label, str(example[column])))
            if "correct" in match and pd.notna(example["correct"]):
                facts.append(("Correct", "yes" if bool(example["correct"]) else "no"))
    return TokenView(
        title=title or f"Example {example_id}",
        facts=facts,
        statements=example_statements(findings, example_id) if findings is not None else [],
        tokens=tokens[:shown],
        special=special[:shown],
        scores={m: [float(v) for v in normalised.loc[m].to_numpy()[:shown]] for m in order},
        raw={m: [float(v) for v in table.loc[m].to_numpy()[:shown]] for m in order},
        hidden_tokens=len(tokens) - shown,
    )


def example_statements(findings: pd.DataFrame, example_id: int) -> list[tuple[bool | None, str]]:
    """The example's per-example findings as written, and its layer / head findings counted per kind."""
    rows = findings[findings["example_id"] == example_id]
    level = finding_level(rows)
    out: list[tuple[bool | None, str]] = []
    for _, row in rows[level == "example"].iterrows():
        holds = None if pd.isna(row["holds"]) else bool(row["holds"])
        out.append((holds, str(row["statement"])))
    subject = rows["subject"] if "subject" in rows else pd.Series(pd.NA, index=rows.index)
    grouped = rows[level != "example"].assign(
        level=level[level != "example"], subject=subject.astype("string").fillna("")
    )
    for (finding, subject, unit), group in grouped.groupby(["finding", "subject", "level"], sort=True):
        judged = group["holds"].dropna().astype(bool)
        what = f"{finding.replace('_', ' ')}" + (f" ({subject})" if subject else "")
        units = "layers" if unit == "layer" else "heads"
        if judged.empty:
            out.append((None, f"{what}: not assessable in any of {len(group)} {units}"))
        else:
            holding = int(judged.sum())
            out.append((holding * 2 > len(judged), f"{what}: holds in {holding} of {len(judged)} {units}"))
    return out


# ----------------------------------------------------------------------------------------------------
# 5. caveats
# ----------------------------------------------------------------------------------------------------
def _caveats(data: _RunData, *, resamples: int, seed: int) -> Section:
    from attn_probe.findings import summarise

    section = Section("caveats", "Caveats and uncertainty")
    section.blocks.append(Heading("What the methods assume"))
    if data.methods:
        section.blocks.append(
            Bullets(
                [
                    f"{m} ({data.method_info[m]['family']}): "
                    f"{_ASSUMES.get(data.method_info[m]['family'], 'not a registered method: no metadata')}; "
                    f"scores are {data.method_info[m]['sign']}"
                    for m in data.methods
                ]
            )
        )
    else:
        section.blocks.append(_note("The manifest lists no methods."))
    section.blocks += _numerical_checks(data)
    section.blocks.append(Heading("How much data"))
    status = data.manifest.get("status")
    lines = [f"{data.n_examples} examples are in this report."]
    if status != "complete":
        lines.append(f"The run is not complete (status {status}): the numbers cover the examples done so far.")
    if data.n_examples < 30:
        lines.append("Fewer than 30 examples: every share below is uncertain; read the intervals, not the points.")
    findings = data.table("findings")
    if findings is not None and not findings.empty:
        not_assessable = int(findings["holds"].isna().sum())
        lines.append(
            f"{not_assessable} of {len(findings)} finding rows were not assessable (e.g. the reference methods "
            "disagreed among themselves, or no erasure order flipped the decision); they are counted apart, never "
            "as 'does not hold'."
        )
    lines.append(
        "The thresholds (section 1) are choices: every finding row stores its value and threshold, so a line "
        "can be redrawn from the findings table without rerunning."
    )
    section.blocks.append(Bullets(lines))
    section.blocks.append(Heading("Confidence intervals: Wilson vs bootstrap over examples"))
    if findings is None or findings.empty:
        section.blocks.append(_skipped("findings"))
        return section
    summary = summarise(findings)
    boot = bootstrap_shares(findings, resamples=resamples, seed=seed)
    keys = ["finding", "subject", "level"]
    merged = summary.merge(boot[[*keys, "boot_low", "boot_high"]], on=keys, how="left").dropna(subset=["share"])
    merged = merged.sort_values(["share", "n_assessable"], ascending=[False, False])
    rows = [
        [
            str(row["finding"]),
            str(row["subject"]) if isinstance(row["subject"], str) else "-",
            str(row["level"]),
            f"{int(row['n_holds'])} / {int(row['n_assessable'])}",
            f"{row['share']:.0%}",
            f"{row['ci_low']:.0%}-{row['ci_high']:.0%}",
            f"{row['boot_low']:.0%}-{row['boot_high']:.0%}" if pd.notna(row["boot_low"]) else "-",
        ]
        for _, row in merged.iterrows()
    ]
    section.blocks.append(
        Table(
            ["finding", "subject", "judged per", "holds / judged", "share", "Wilson 95%", "bootstrap 95%"],
            rows,
            caption=f"Bootstrap: {resamples} resamples of the examples with replacement (seed {seed}), percentile "
            "interval.",
        )
    )
    section.blocks.append(
        Paragraph(
            "The Wilson interval treats every judged row as an independent case. Rows judged per layer or head "
            "are not independent within an example, so the bootstrap, which resamples whole examples, is the "
            "more honest interval for them; with one row per example the two agree closely. With few examples "
            "the bootstrap is too narrow too (zero width when every example gives the same share)."
        )
    )
    return section


def _numerical_checks(data: _RunData) -> list[Block]:
    """Whether the numbers can be trusted: each integrated-gradients method's convergence, the capture's drift
    from the model's own attention backend, and the headline numbers that rest on a flagged result."""
    blocks: list[Block] = [Heading("Numerical checks: integrated gradients' convergence and the capture's drift")]
    flags = data.table("flags")
    if flags is None:
        blocks.append(
            _note(
                "Not recorded: the run has no flags table (it was made before attn_probe recorded them), so "
                "neither integrated gradients' convergence nor the capture's drift can be reported."
            )
        )
        return blocks
    lines = [*_convergence_lines(data, flags), _drift_line(flags)]
    blocks.append(Bullets(lines))
    dependence = data.dependence()
    if dependence.empty:
        blocks.append(Paragraph("No headline number rests on a flagged result."))
        return blocks
    findings = data.table("findings")
    resting = int(dependence["n_resting"].sum())
    judged = int(findings["holds"].notna().sum()) if findings is not None else 0
    blocks.append(
        Paragraph(
            f"Headline numbers that rest on a flagged result: {resting} of the {judged} judged finding rows. Each "
            "row below is a headline (section 2) with the judged cases that rest on a flagged result on their "
            "example (a finding judged against a flagged reference method, or about attention read from a capture "
            "that drifted), and the headline without them."
        )
    )
    rows = []
    for _, row in dependence.iterrows():
        without = (
            f"{int(row['n_holds_without'])} / {int(row['n_assessable_without'])} ({row['share_without']:.0%})"
            if row["n_assessable_without"]
            else "nothing left"
        )
        rows.append(
            [
                str(row["finding"]),
                str(row["subject"]) if isinstance(row["subject"], str) else "-",
                str(row["level"]),
                f"{int(row['n_resting'])} of {int(row['n_assessable'])}",
                str(row["resting_on"]),
                without,
            ]
        )
    blocks.append(
        Table(
            [
                "finding",
                "subject",
                "judged per",
                "cases on flagged results",
                "flagged result",
                "holds / judged without them",
            ],
            rows,
            caption="Flagged results: a method named here did not converge on those examples; capture drift: the "
            "attention was read from a forward pass whose logits differ from the model's own.",
        )
    )
    return blocks


def _convergence_lines(data: _RunData, flags: pd.DataFrame) -> list[str]:
    from attn_probe.findings.flags import IG_CHECK

    rows = flags[flags["check"] == IG_CHECK]
    lines = []
    for method, group in rows.groupby("method", sort=True):
        threshold = float(group["threshold"].max())
        flagged = group[group["flagged"].astype(bool)]
        values = group["value"].astype(float)
        largest = "not finite" if not np.isfinite(values).all() else f"{values.max():.1%}"
        n = int(group["example_id"].nunique())
        if flagged.empty:
            lines.append(
                f"{method} converged on all {n} examples: its relative convergence delta (how far the sum of its "
                f"scores is from f(input) - f(baseline), as a share of it) is at most {largest}, within the "
                f"threshold {threshold:.1%}."
            )
            continue
        ids = sorted({int(i) for i in flagged["example_id"]})
        lines.append(
            f"{method} did not converge on {len(ids)} of {n} examples (relative convergence delta above "
            f"{threshold:.1%}, up to {largest}): examples {_id_list(ids)}. Its scores there do not add up to the "
            "change of the target between the baseline and the input, so the findings judged against it on those "
            "examples (listed below) are less reliable; raise its n_steps and rerun."
        )
    recorded = set(rows["method"].astype(str))
    for method in data.methods:
        if method == "integrated_gradients" and method not in recorded:
            lines.append(f"{method}: its convergence delta was not recorded in this run.")
    return lines


def _drift_line(flags: pd.DataFrame) -> str:
    from attn_probe.findings.flags import DRIFT_CHECK, max_drift

    rows = flags[flags["check"] == DRIFT_CHECK]
    if rows.empty:
        return "The capture's drift from the model's own attention backend was not measured in this run."
    largest = max_drift(flags)
    threshold = float(rows["threshold"].min())
    flagged = rows[rows["flagged"].astype(bool)]
    if flagged.empty:
        return (
            f"The attention capture matches the model's own attention backend: the largest difference of their "
            f"logits is {largest:.2g} (threshold {threshold:.0e}), over {rows['example_id'].nunique()} examples."
        )
    ids = sorted({int(i) for i in flagged["example_id"]})
    return (
        f"The attention capture drifted from the model's own attention backend on {len(ids)} of "
        f"{rows['example_id'].nunique()} examples (their batches' logits differ by up to {largest:.2g}, threshold "
        f"{threshold:.0e}): examples {_id_list(ids)}. The attention weights read there come from a forward pass "
        "whose output is not quite the model's, so every finding about attention on those examples rests on them."
    )


def _numerical_fact(data: _RunData) -> str:
    from attn_probe.findings.flags import DRIFT_CHECK, IG_CHECK, max_drift

    flags = data.table("flags")
    if flags is None:
        return "not recorded (no flags table)"
    parts = []
    for method, group in flags[flags["check"] == IG_CHECK].groupby("method", sort=True):
        bad = int(group.loc[group["flagged"].astype(bool), "example_id"].nunique())
        n = int(group["example_id"].nunique())
        parts.append(f"{method} did not converge on {bad} of {n} examples" if bad else f"{method} converged ({n})")
    drift = flags[flags["check"] == DRIFT_CHECK]
    if drift.empty:
        parts.append("capture drift not measured")
    else:
        bad = int(drift.loc[drift["flagged"].astype(bool), "example_id"].nunique())
        parts.append(
            f"capture drift up to {max_drift(flags):.2g}" + (f", above its threshold on {bad} examples" if bad else "")
        )
    return "; ".join(parts) + " (see Caveats)"


def _caution(data: _RunData, dependence: pd.DataFrame) -> str:
    names = sorted({name for text in dependence["resting_on"] for name in str(text).split(", ")})
    flags = data.table("flags")
    what = []
    for name in names:
        if name == "capture drift":
            from attn_probe.findings.flags import DRIFT_CHECK

            rows = flags[(flags["check"] == DRIFT_CHECK) & flags["flagged"].astype(bool)]
            what.append(f"the attention capture drifted from the model's backend on {rows['example_id'].nunique()}")
        else:
            from attn_probe.findings.flags import IG_CHECK

            rows = flags[(flags["check"] == IG_CHECK) & (flags["method"] == name) & flags["flagged"].astype(bool)]
            what.append(f"{name} did not converge on {rows['example_id'].nunique()}")
    resting = int(dependence["n_resting"].sum())
    return (
        f"Caution: {' and '.join(what)} of the {data.n_examples} examples, and {resting} of the judged cases behind "
        "these headlines rest on those results; each headline that leans on them says how many, and what it comes "
        "to without them (see Caveats: numerical checks)."
    )


def _with_dependence(sentence: str, row: pd.Series, dependence: pd.DataFrame) -> str:
    """``sentence`` (a headline of ``row``), with the count of its cases that rest on a flagged result."""
    if dependence.empty:
        return sentence
    subject = row["subject"] if isinstance(row["subject"], str) else None
    match = dependence[
        (dependence["finding"] == row["finding"])
        & (dependence["level"] == row["level"])
        & dependence["subject"].apply(lambda s: (s if isinstance(s, str) else None) == subject)
    ]
    if match.empty:
        return sentence
    found = match.iloc[0]
    without = (
        f"without them it holds in {int(found['n_holds_without'])} of {int(found['n_assessable_without'])}"
        if found["n_assessable_without"]
        else "nothing is left without them"
    )
    names = str(found["resting_on"]).split(", ")
    results = [
        "a capture that drifted from the model's backend"
        if name == "capture drift"
        else f"{name} results that did not converge"
        for name in names
    ]
    return (
        f"{sentence} [flagged: {int(found['n_resting'])} of these {int(found['n_assessable'])} cases rest on "
        f"{' or '.join(results)}; {without}]"
    )


def _id_list(ids: Sequence[int], shown: int = 10) -> str:
    text = ", ".join(str(i) for i in ids[:shown])
    return text + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    chosen = [formats] if isinstance(formats, str) else list(formats)
    expanded = [f for item in chosen for f in (FORMATS if item == "both" else (item,))]
    unknown = [f for f in expanded if f not in FORMATS]
    if unknown or not expanded:
        raise ValueError(f"unknown report format(s) {unknown or chosen}: choose html, md or both")
    return tuple(dict.fromkeys(expanded))


def _remove_stale_figures(folder: Path, keep: set[str]) -> None:
    """Figures an earlier report of this folder wrote and this one did not (a section now skipped)."""
    known = ("head-agreement-", "method-agreement", "faithfulness", "aopc-curves", "sinks", "distance",
             "mean-distance", "counterfactuals", "findings")  # fmt: skip
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.suffix in (".png", ".svg") and path.name not in keep and path.name.startswith(known):
            path.unlink(missing_ok=True)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "not recorded"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _compact(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _fmt(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "NaN" if math.isnan(number) else f"{number:.3f}"
