"""Small real runs for the report tests: the tiny BERT on a few texts, with few methods and checks."""

from __future__ import annotations

import pandas as pd
import pytest

from attn_probe.probe import Probe
from attn_probe.store import Run, load_run
from tests.threads import one_torch_thread

METHODS = ["raw_attention", "attention_rollout", "saliency", "leave_one_out"]
CHECKS = ["agreement", "erasure", "flips", "sinks", "position", "counterfactuals"]
TEXTS = [
    "a gorgeous, witty movie",
    "dull <script>alert(1)</script>",
    "the plot is thin but the acting is superb",
    "two hours i will never get back",
    "i laughed, i cried",
    "not good, not bad",
]
LABELS = [1, 0, 1, 0, 1, 0]
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def probe(tiny_bert, tokenizer):
    return Probe(tiny_bert, tokenizer, name="tiny")


@pytest.fixture(scope="module")
def full_run(probe, tmp_path_factory):
    """Every default check, labelled texts, two sampled attention matrices."""
    out = tmp_path_factory.mktemp("full") / "run"
    data = pd.DataFrame({"text": TEXTS, "label": LABELS})
    probe.run(data, out, methods=METHODS, checks=CHECKS, label_column="label", batch_size=3, sample=2, progress=False)
    return load_run(out)


@pytest.fixture(scope="module")
def agreement_run(probe, tmp_path_factory):
    """Only the agreement check, no labels: most figure sections have no table."""
    out = tmp_path_factory.mktemp("agreement") / "run"
    probe.run(TEXTS[:3], out, methods=METHODS, checks=["agreement"], sample=0, progress=False)
    return load_run(out)


@pytest.fixture(scope="module")
def hostile_run(full_run, tmp_path_factory):
    """The full run with markup in every string that comes from data: tokens, texts, labels, targets, a method
    name, the model name, statements (and a ``$`` and a ``|`` for matplotlib's mathtext and Markdown tables)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    renamed = {"attention_rollout": SCRIPT}
    tables = {}
    for name in full_run.tables():
        frame = full_run.table(name)
        for column in ("method", "method_a", "method_b", "subject"):
            if column in frame:
                frame[column] = frame[column].astype("string").replace(renamed)
        tables[name] = frame
    scores = tables["scores"]
    scores.loc[scores["token_index"] == 1, "token"] = SCRIPT
    scores.loc[scores["token_index"] == 2, "token"] = IMG
    scores.loc[scores["token_index"] == 3, "token"] = "$5 | `x` $$"
    scores["target"] = IMG
    examples = tables["examples"]
    examples["text"] = [f"{SCRIPT} {IMG} {text}" for text in examples["text"]]
    examples["target"] = SCRIPT
    examples["label"] = [IMG] * len(examples)
    findings = tables["findings"]
    findings["statement"] = findings["statement"] + " " + SCRIPT
    identity = full_run.identity
    identity["model"] = f"{SCRIPT}{IMG}"
    identity["methods"] = [renamed.get(m, m) for m in identity["methods"]]
    identity["target"] = IMG
    with Run.open(out, identity, {"source": SCRIPT, "text_column": IMG}) as run:
        run.write(sorted(full_run.done()), tables)
        run.finish()
    return load_run(out)
