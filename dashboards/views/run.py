"""A run: open a run directory, see how often each finding holds, filter the examples, open one, and browse the
report's figures."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from attn_probe.findings import headlines, summarise
from attn_probe.report import figure_blocks
from attn_probe.report.document import Heading, Paragraph, Plot
from dashboards import charts
from dashboards.common import (
    STATE_RUN,
    init_state,
    open_run,
    resolve_run_dir,
    run_example,
    run_root,
    run_stamp,
    run_table,
    safe,
    shown_errors,
)
from dashboards.data import RunFilters, default_example, example_table, head_grid
from dashboards.example_view import show_example

HEAD_METRICS = {
    "entropy": "entropy of each query's attention (nats; low = focused)",
    "special_share": "share of attention on special tokens",
    "first_share": "share of attention on the first token",
    "self_share": "share of attention a token puts on itself",
    "mean_distance": "attention-weighted mean |key - query| (tokens)",
    "max_weight": "largest weight of a query row",
}


@st.cache_data(show_spinner=False, max_entries=4)
def report_figures(path: str, stamp: float) -> list:
    """The report's figure blocks of the run (PNG), drawn once per run version."""
    return figure_blocks(open_run(path, stamp))


init_state()
st.title("A run")
typed = st.text_input(
    "Run directory",
    value=st.session_state[STATE_RUN],
    help=f"A directory written by `attn-probe run` / `Probe.run` (or `attn-probe demo`: runs/demo), inside "
    f"{run_root()} (relative paths start there).",
    key="run-dir-input",
).strip()
st.session_state[STATE_RUN] = typed
if not typed:
    st.info("Type the path of a run directory, or start the dashboard with `attn-probe dashboard RUN_DIR`.")
    st.stop()

with st.spinner("Opening the run ..."), shown_errors(f"Could not open the run {typed}"):
    run_dir = resolve_run_dir(typed)  # absolute, inside the run root: every later read uses this path
    stamp = run_stamp(run_dir)
    run = open_run(run_dir, stamp)
    names = run.tables()
    if "examples" not in names:
        raise ValueError("it has no examples table yet (has the run written its first batch?)")
    examples = run_table(run_dir, stamp, "examples")
    findings = run_table(run_dir, stamp, "findings") if "findings" in names else pd.DataFrame()

identity = run.identity or {}
st.markdown(
    f"**Model:** {safe(identity.get('model', '?'))} · **examples:** {len(run.done())} · **status:** "
    f"{safe(run.status)} · **methods:** {safe(', '.join(identity.get('methods') or []))} · **checks:** "
    f"{safe(', '.join(identity.get('checks') or []))}  \n**Target:** {safe(identity.get('target', 'not recorded'))}"
)

# ---------------------------------------------------------------------------------------------- findings
st.header("How often each finding holds")
if findings.empty:
    st.info("This run has no findings table (it was run without checks).")
else:
    summary = summarise(findings)
    if summary["share"].notna().any():
        st.altair_chart(charts.findings_chart(summary), width="stretch")
        st.caption("Bars: share of the judged cases where the finding holds; lines: 95% Wilson intervals.")
        st.markdown("\n".join(f"- {safe(sentence)}" for sentence in headlines(summary)))
    else:
        st.info("No finding could be judged in this run.")
    with st.expander("The summary table"):
        st.dataframe(summary, hide_index=True, key="run-summary")

# ---------------------------------------------------------------------------------------------- examples
st.header("Examples")
with st.expander("Filters", expanded=True):
    left, right = st.columns(2)
    finding_names = sorted(findings["finding"].unique()) if not findings.empty else []
    chosen_findings = left.multiselect("Finding", finding_names, key="run-filter-finding")
    holding_only = left.checkbox("Only examples where a chosen finding holds", key="run-filter-holding")
    labels: list = []
    if "label" in examples:
        labels = right.multiselect(
            "Label", sorted(examples["label"].dropna().unique().tolist()), key="run-filter-label"
        )
    low, high = int(examples["n_tokens"].min()), int(examples["n_tokens"].max())
    length = right.slider(
        "Length (tokens)", low, max(high, low + 1), (low, max(high, low + 1)), key="run-filter-length"
    )
    layer_ids = sorted(int(v) for v in findings["layer"].dropna().unique()) if not findings.empty else []
    head_ids = sorted(int(v) for v in findings["head"].dropna().unique()) if not findings.empty else []
    layers = left.multiselect("Layer (per-layer / per-head findings)", layer_ids, key="run-filter-layer")
    heads = right.multiselect("Head (per-head findings)", head_ids, key="run-filter-head")
filters = RunFilters(
    findings=tuple(chosen_findings),
    labels=tuple(labels),
    length=(int(length[0]), int(length[1])),
    layers=tuple(layers),
    heads=tuple(heads),
    holding_only=holding_only,
)
table = example_table(examples, findings, filters)
st.caption(
    f"{len(table)} of {len(examples)} examples. judged / holding: findings rows (under the filters) that could be "
    "judged / that hold; misleading: the mean over finding kinds of the share that holds. Click a row to open it; "
    "click a column header to sort."
)
event = st.dataframe(
    table,
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key="run-table",
    column_config={"text": st.column_config.TextColumn("text", width="large")},
)

selected = None
rows = event.selection.rows if event is not None and hasattr(event, "selection") else []
if rows:
    selected = int(table.iloc[rows[0]]["example_id"])
    st.query_params["example"] = str(selected)  # the address now opens this example
elif "example" in st.query_params:
    asked = st.query_params["example"]
    if not asked.strip().lstrip("-").isdigit() or int(asked) not in run.done():
        st.warning(f"The address asks for example {safe(asked)}, which this run does not have: showing the default.")
    else:
        selected = int(asked)
if selected is None:
    default = default_example(examples, findings)
    in_table = set(table["example_id"])
    selected = default if default in in_table or not in_table else int(table["example_id"].iloc[0])

if selected is not None:
    st.subheader(f"Example {selected}")
    with st.spinner("Reading the example ..."), shown_errors(f"Could not read example {selected}"):
        data = run_example(run_dir, stamp, selected)
    show_example(data, key="run")

# ---------------------------------------------------------------------------------------------- heads
st.header("Heads across the run")
if "attention" in names:
    metric = st.selectbox(
        "Per-head measure", list(HEAD_METRICS), format_func=lambda m: f"{m}: {HEAD_METRICS[m]}", key="run-head-metric"
    )
    summaries = run_table(run_dir, stamp, "attention")
    kept = summaries[summaries["example_id"].isin(table["example_id"])]
    if kept.empty:
        st.info("No example passes the filters.")
    else:
        grid = head_grid(kept, metric)
        bound = max(float(grid[metric].max()), 1.0) if metric in ("entropy", "mean_distance") else 1.0
        grid = grid.assign(**{metric: grid[metric] / bound}) if bound != 1.0 else grid
        unit = f" (divided by its maximum {bound:.3g})" if bound != 1.0 else ""
        st.altair_chart(
            charts.layer_head_heatmap(grid, metric, title=f"{metric}{unit}, mean over {kept['example_id'].nunique()} "
                                                          "filtered examples", diverging=False),
            width="stretch",
        )  # fmt: skip
else:
    st.info("This run has no per-head attention summary table.")

# ---------------------------------------------------------------------------------------------- report figures
st.header("The report's figures")
if st.toggle("Draw the report's figures (a few seconds the first time)", key="run-figures"):
    with st.spinner("Drawing the figures ..."), shown_errors("Could not draw the report's figures"):
        blocks = report_figures(run_dir, stamp)
    for block in blocks:
        if isinstance(block, Heading):
            st.subheader(block.text)
        elif isinstance(block, Plot):
            st.image(block.png, caption=block.caption)
        elif isinstance(block, Paragraph):
            st.caption(block.text)
