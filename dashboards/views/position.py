"""Position variants: when does position make attention look like an explanation?

Three views: the relative-position study's results side by side per variant (``analyses/position_variants``:
how well each method recovers the decisive tokens, per variant and task); attention mass by relative
distance; and, on a small model of our own trained here, one head's logits split into what the tokens say
(content) and what their positions add.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from attn_probe.compare import logit_parts, position_logit_share
from dashboards import charts
from dashboards.common import resolve_inside, run_root, safe, shown_errors
from dashboards.data import (
    LOGIT_VARIANTS,
    SYNTHETIC_TASKS,
    VARIANT_STUDIES,
    logit_heatmap_frame,
    study_folder,
    study_tables,
    synthetic_example,
    synthetic_task,
    synthetic_tokens,
    train_variant,
)

METRICS = {
    "precision": "R-precision: share of the top-|R| tokens that are decisive",
    "auc": "probability that a decisive token outranks another",
    "top1": "the top-ranked token is decisive",
}
DEFAULT_METHODS = ["raw_attention", "attention_rollout", "leave_one_out", "integrated_gradients", "random"]


@st.cache_data(show_spinner=False)
def load_study(folder: str, name: str) -> dict:
    return study_tables(folder, name)


@st.cache_resource(show_spinner=False)
def trained_models() -> dict[tuple, tuple[Any, Any]]:
    """Models trained here, by (variant, task, steps, seed), shared by every session. A plain dict rather than a
    cached training function: training draws a progress bar, which a cached function may not do."""
    return {}


def trained(variant: str, task: str, steps: int, seed: int, on_step: Any) -> tuple[Any, Any]:
    """``(model, training report)``, trained on first use (the oldest of more than 8 is dropped)."""
    shelf = trained_models()
    key = (variant, task, steps, seed)
    if key not in shelf:
        shelf[key] = train_variant(variant, task, steps=steps, seed=seed, on_step=on_step)
        while len(shelf) > 8:
            shelf.pop(next(iter(shelf)))
    return shelf[key]


st.title("Position variants")

# ---------------------------------------------------------------------------------------------- the study
st.header("The studies, per variant")
study = st.selectbox(
    "Study", list(VARIANT_STUDIES), format_func=lambda name: f"{name}: {VARIANT_STUDIES[name]}", key="pos-study"
)
folder = st.text_input(
    "Study results folder",
    value=str(study_folder(name=study)),
    help=f"The output folder of `python -m analyses.{study}`, inside {study_folder().parent} or {run_root()}.",
    key=f"pos-folder-{study}",
)
with shown_errors("Could not read the study's results"):
    allowed = resolve_inside(folder, [study_folder().parent, run_root()], "study results")
    tables = load_study(str(allowed), study)
recovery, accuracy = tables["recovery"], tables["accuracy"]
left, middle = st.columns(2)
task = left.selectbox("Task", sorted(recovery["task"].unique()), key="pos-task")
metric = middle.selectbox(
    "Recovery measure", list(METRICS), format_func=lambda m: f"{m}: {METRICS[m]}", key="pos-metric"
)
available = sorted(recovery["method"].unique())
methods = st.multiselect(
    "Methods", available, default=[m for m in DEFAULT_METHODS if m in available], key="pos-methods"
)
rows = recovery[(recovery["task"] == task) & recovery["method"].isin(methods)]
if rows.empty:
    st.info("No rows for this task and these methods.")
else:
    st.altair_chart(
        charts.interval_bars(rows, x="variant", value=metric, low=f"{metric}_low", high=f"{metric}_high",
                             color="method", title=f"{metric} on the {task} task, per variant ({study})"),
        width="stretch",
    )  # fmt: skip
    st.caption(
        "Bars: mean over seeds; lines: hierarchical bootstrap 95% intervals (seeds, then examples). `random` is "
        "the chance baseline. Only models that learned their task are scored."
    )
    shown = rows[["variant", "method", "n_seeds", "n_examples", metric, f"{metric}_low", f"{metric}_high",
                  f"{metric}_seed_min", f"{metric}_seed_max"]]  # fmt: skip
    st.dataframe(shown, hide_index=True, key="pos-recovery")
learned = (
    accuracy[accuracy["task"] == task]
    .groupby("variant", as_index=False)
    .agg(accuracy=("accuracy", "mean"), seeds_learned=("learned", "sum"), seeds=("seed", "nunique"))
)
st.markdown("**Held-out accuracy per variant** (mean over seeds; a seed counts as learned at >= 0.9):")
st.dataframe(learned, hide_index=True, key="pos-accuracy")

# ---------------------------------------------------------------------------------------------- distance
st.header("Attention by relative distance")
profile = tables["distance_profile"]
profile = profile[profile["task"] == task]
layer_ids = sorted(profile["layer"].unique())
layer = st.selectbox("Layer", layer_ids, index=len(layer_ids) - 1, key="pos-distance-layer")
chosen = profile[profile["layer"] == layer]
st.altair_chart(
    charts.distance_chart(chosen, color="variant", title=f"Share of a query's attention by key - query, layer {layer}"),
    width="stretch",
)
st.caption("Mean over each variant's seeds and held-out inputs; a flat line is attention that ignores position.")

# ---------------------------------------------------------------------------------------------- logits
st.header("Content vs position in a head's logits (our own models)")
st.caption(
    "A small encoder (2 layers x 4 heads, width 32) trained here on the chosen task. Each head's pre-softmax "
    "logits split exactly into content (q . k) and position (the variant's term) for ALiBi, T5 and Shaw; for "
    "rotary the position part is the interaction position adds to the dot product."
)
a, b, c, d = st.columns(4)
variant = a.selectbox("Variant", list(LOGIT_VARIANTS), index=LOGIT_VARIANTS.index("t5"), key="pos-variant")
train_task = b.selectbox("Task to train on", list(SYNTHETIC_TASKS), index=1, key="pos-train-task")
steps = int(c.number_input("Training steps", 20, 2000, 300, step=20, key="pos-steps"))
seed = int(d.number_input("Seed", 0, 1000, 0, key="pos-seed"))
if st.toggle("Train (or reuse) this model", key="pos-train"):
    bar = st.progress(0.0, text="Training ...")

    def on_step(step: int, loss: float) -> None:
        bar.progress(step / steps, text=f"Training: step {step} of {steps}, loss {loss:.3f}")

    with shown_errors("Could not train the model"):
        model, report = trained(variant, train_task, steps, seed, on_step)
    bar.progress(1.0, text=f"Trained: held-out accuracy {report.accuracy:.3f} on {report.evaluated} examples")
    example = synthetic_example(train_task, seed)
    task_object = synthetic_task(train_task)
    tokens = synthetic_tokens(example, task_object)
    inputs = {"input_ids": example.input_ids, "attention_mask": example.attention_mask}
    parts, valid = logit_parts(model, inputs)
    shares = position_logit_share(model, inputs)
    left, right = st.columns(2)
    logit_layer = left.selectbox("Layer", list(range(len(parts))), key="pos-logit-layer")
    logit_head = right.selectbox("Head", list(range(parts[0].total.shape[1])), key="pos-logit-head")
    share = shares[(shares["layer"] == logit_layer) & (shares["head"] == logit_head)]["position_share"].iloc[0]
    st.metric(
        "Position share of the logits",
        f"{share:.3f}",
        help="R² of the logits explained by the position part alone (within query rows): 1 = position decides "
        "where this head looks, 0 = content does.",
    )
    frame = logit_heatmap_frame(parts, valid, int(logit_layer), int(logit_head), tokens)
    st.altair_chart(charts.logit_matrix(frame, title=f"layer {logit_layer}, head {logit_head}"))
    st.caption(
        f"Held-out example: {safe(' '.join(tokens))} (* marks a decisive token, ^ a cue). One colour scale over "
        "the three panels."
    )
    st.dataframe(shares, hide_index=True, key="pos-shares")
