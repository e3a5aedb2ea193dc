"""Run directories: create, resume, refuse to mix, write and read back, samples, manifest."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from attn_probe.store import (
    DuplicateExampleError,
    NotARunError,
    ReadOnlyRunError,
    Run,
    RunBusyError,
    RunMismatchError,
    StoreError,
    StoreWarning,
    load_run,
    model_fingerprint,
)
from attn_probe.store import run as run_module
from tests.store.synthetic import IDENTITY, chunk_tables, example_rows, expected_table


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_create_writes_manifest_and_folders(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY, {"batch_size": 4}) as run:
        assert run.done() == set()
        assert run.tables() == []
        assert not run.readonly
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["format"] == "attn_probe.run"
    assert manifest["identity"] == IDENTITY
    assert manifest["settings"] == {"batch_size": 4}
    assert manifest["status"] == "running"
    assert {"python", "attn_probe", "torch", "transformers", "captum"} <= set(manifest["versions"])
    assert manifest["versions"]["attn_probe"]
    for folder in ("chunks", "tables", "samples"):
        assert (tmp_path / "run" / folder).is_dir()


def test_write_then_table_equals_input(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        tables = chunk_tables([0, 1, 2])
        assert run.write([0, 1, 2], tables) == 0
        for name, frame in tables.items():
            pd.testing.assert_frame_equal(run.table(name), frame)
        assert run.tables() == ["heads", "scores"]
        assert run.done() == {0, 1, 2}


def test_tables_come_back_in_example_order_whatever_the_chunks(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        for ids in ([7, 5], [1], [6, 2, 3], [4, 0]):
            run.write(ids, chunk_tables(ids))
        pd.testing.assert_frame_equal(run.table("scores"), expected_table("scores", list(range(8))))
        frames = list(run.iter_table("heads"))
        assert len(frames) == 4
        assert [frame["example_id"].iloc[0] for frame in frames] == [0, 1, 2, 5]  # chunks by first example id
        pd.testing.assert_frame_equal(
            pd.concat(frames).sort_values("example_id", kind="stable").reset_index(drop=True),
            expected_table("heads", list(range(8))),
        )


def test_resume_keeps_what_was_committed(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        run.write([0, 1], chunk_tables([0, 1]))
    with Run.open(tmp_path / "run", {**IDENTITY, "methods": ("saliency", "attention_rollout")}) as run:
        assert run.done() == {0, 1}
        assert run.write([2, 3], chunk_tables([2, 3])) == 1
        assert run.manifest["sessions"] == 2
        pd.testing.assert_frame_equal(run.table("scores"), expected_table("scores", [0, 1, 2, 3]))


def test_resume_with_another_identity_is_refused(tmp_path):
    Run.open(tmp_path / "run", IDENTITY).close()
    other = {**IDENTITY, "model": "gpt2", "steps": 16}
    with pytest.raises(RunMismatchError) as error:
        Run.open(tmp_path / "run", other)
    message = one_line(error)
    assert "model ('tiny-bert' there, 'gpt2' here)" in message
    assert "steps (8 there, 16 here)" in message
    assert "methods" not in message
    assert "choose another directory" in message
    with pytest.raises(RunMismatchError, match=r"extra \(absent there, 1 here\)"):
        Run.open(tmp_path / "run", {**IDENTITY, "extra": 1})
    with pytest.raises(RunMismatchError, match=r"steps \(8 there, '8' here\)"):
        Run.open(tmp_path / "run", {**IDENTITY, "steps": "8"})
    assert isinstance(error.value, ValueError)


def test_nested_identity_differences_are_named(tmp_path):
    identity = {"model": "m", "target": {"kind": "logit", "class": 1}}
    Run.open(tmp_path / "run", identity).close()
    with pytest.raises(RunMismatchError, match=r"target\.class \(1 there, 0 here\)"):
        Run.open(tmp_path / "run", {"model": "m", "target": {"kind": "logit", "class": 0}})


def test_free_settings_are_not_compared(tmp_path):
    Run.open(tmp_path / "run", IDENTITY, {"batch_size": 4}).close()
    with Run.open(tmp_path / "run", IDENTITY, {"batch_size": 32}) as run:
        assert run.settings == {"batch_size": 32}
    with Run.open(tmp_path / "run", IDENTITY) as run:
        assert run.settings == {"batch_size": 32}


def test_identity_must_be_json_data(tmp_path):
    with pytest.raises(StoreError, match=r"identity\.model is a object"):
        Run.open(tmp_path / "run", {"model": object()})
    with pytest.raises(StoreError, match="NaN"):
        Run.open(tmp_path / "run2", {"lr": float("nan")})
    with Run.open(tmp_path / "run3", {"layers": np.arange(3), "n": np.int64(4)}) as run:
        assert run.identity == {"layers": [0, 1, 2], "n": 4}


def test_not_a_run(tmp_path):
    with pytest.raises(NotARunError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotARunError) as error:
        load_run(tmp_path / "plain")
    assert "manifest.json is missing" in one_line(error)
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    with pytest.raises(NotARunError, match=r"not empty and has no manifest\.json \(found notes\.txt\)"):
        Run.open(tmp_path / "plain", IDENTITY)
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["notes.txt"]  # left as it was
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotARunError, match="is a file"):
        Run.open(tmp_path / "file", IDENTITY)


def test_damaged_manifest_is_refused(tmp_path):
    Run.open(tmp_path / "run", IDENTITY).close()
    (tmp_path / "run" / "manifest.json").write_text('{"format": "attn_probe.run", "ident')
    with pytest.raises(NotARunError, match=r"manifest\.json is not valid JSON \(damaged.*restore it from a backup"):
        load_run(tmp_path / "run")
    with pytest.raises(NotARunError, match="not valid JSON"):
        Run.open(tmp_path / "run", IDENTITY)


def test_duplicate_example_ids_are_refused(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        run.write([0, 1], chunk_tables([0, 1]))
        with pytest.raises(DuplicateExampleError, match=r"examples \[1\] are already committed"):
            run.write([1, 2], chunk_tables([1, 2]))
        with pytest.raises(DuplicateExampleError, match="appear twice"):
            run.write([3, 3], chunk_tables([3]))
        assert run.done() == {0, 1}
        assert run.counts()["chunks"] == 1
    with Run.open(tmp_path / "run", IDENTITY) as run, pytest.raises(DuplicateExampleError):
        run.write([0], chunk_tables([0]))
    assert sorted(p.name for p in (tmp_path / "run" / "tables" / "scores").iterdir()) == ["000000.parquet"]


def test_bad_tables_are_refused_before_anything_is_written(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        with pytest.raises(StoreError, match="no 'example_id' column"):
            run.write([0], {"scores": pd.DataFrame({"score": [1.0]})})
        with pytest.raises(StoreError, match=r"rows for examples \[9\]"):
            run.write([0], {"scores": example_rows(9)})
        with pytest.raises(StoreError, match="must be integers"):
            run.write([0], {"scores": pd.DataFrame({"example_id": [0.0]})})
        with pytest.raises(StoreError, match=r"table 'scores' cannot be stored as Parquet \(.*\): give each column"):
            run.write([0], {"scores": pd.DataFrame({"example_id": [0, 0], "value": [1.5, "high"]})})
        with pytest.raises(StoreError, match="not usable"):
            run.write([0], {"../escape": example_rows(0)})
        with pytest.raises(StoreError, match="example ids are integers"):
            run.write(["0"], {"scores": example_rows(0)})
        assert run.done() == set()
        assert not any((tmp_path / "run" / "tables").iterdir())
        assert run.write([], {}) is None


def test_example_without_rows_is_still_done(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        run.write([0, 1], {"scores": example_rows(1)})
        run.write([2], {})
        assert run.done() == {0, 1, 2}
        pd.testing.assert_frame_equal(run.table("scores"), example_rows(1))


def test_reading_options(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        for ids in ([0, 1, 2], [3, 4], [5, 6, 7]):
            run.write(ids, chunk_tables(ids))
        full = expected_table("scores", list(range(8)))
        pd.testing.assert_frame_equal(
            run.table("scores", columns=["example_id", "score"]), full[["example_id", "score"]]
        )
        pd.testing.assert_frame_equal(
            run.table("scores", filters=[("token_index", "==", 0)]),
            full[full["token_index"] == 0].reset_index(drop=True),
        )
        pd.testing.assert_frame_equal(
            run.table("scores", example_ids=[1, 6]), full[full["example_id"].isin([1, 6])].reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(run.table("scores", columns=["score"]), full[["score"]])
        pd.testing.assert_frame_equal(run.table("scores", example_ids=[99]), full.iloc[:0])
        with pytest.raises(StoreError, match="has no table 'nope'; its tables: heads, scores"):
            run.table("nope")


def test_iter_table_reads_one_chunk_at_a_time(tmp_path, monkeypatch):
    """Memory stays flat: iterating opens one chunk file per frame, never all of them up front."""
    with Run.open(tmp_path / "run", IDENTITY) as run:
        for start in range(0, 40, 4):
            ids = list(range(start, start + 4))
            run.write(ids, chunk_tables(ids))
    reads = []
    original = run_module._chunks.read_file
    monkeypatch.setattr(run_module._chunks, "read_file", lambda *a: reads.append(a[1].path) or original(*a))
    run = load_run(tmp_path / "run")
    frames = run.iter_table("scores")
    assert reads == []  # lazy: nothing read before the first frame is asked for
    sizes = []
    for index, frame in enumerate(frames):
        assert len(reads) == index + 1  # one chunk file read per frame, no read-ahead
        sizes.append(len(frame))
    assert len(reads) == 10
    assert max(sizes) == max(len(chunk_tables(list(range(s, s + 4)))["scores"]) for s in range(0, 40, 4))
    assert sum(sizes) == run.counts()["rows"]["scores"]
    reads.clear()
    run.table("scores", example_ids=[5])  # chunks without the wanted examples are not opened
    assert reads == ["tables/scores/000001.parquet"]


def test_load_run_is_read_only(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        run.write([0], chunk_tables([0]))
    run = load_run(tmp_path / "run")
    assert run.readonly
    with pytest.raises(ReadOnlyRunError, match=r"use Run\.open"):
        run.write([1], chunk_tables([1]))
    with pytest.raises(ReadOnlyRunError):
        run.finish()


def test_one_writer_at_a_time(tmp_path):
    first = Run.open(tmp_path / "run", IDENTITY)
    with pytest.raises(RunBusyError, match=r"being written by process \d+"):
        Run.open(tmp_path / "run", IDENTITY)
    load_run(tmp_path / "run")  # readers are welcome
    first.close()
    with pytest.raises(ReadOnlyRunError):
        first.write([0], chunk_tables([0]))
    Run.open(tmp_path / "run", IDENTITY).close()


def test_finish_and_resume_after_finishing(tmp_path):
    with Run.open(tmp_path / "run", IDENTITY) as run:
        run.write([0, 1], chunk_tables([0, 1]))
        manifest = run.finish({"n_failed": 0, "note": "ok"})
    assert manifest["status"] == "complete"
    assert manifest["finished"]
    assert manifest["elapsed_s"] >= 0
    assert manifest["extra"] == {"n_failed": 0, "note": "ok"}
    assert manifest["counts"] == {"examples": 2, "chunks": 1, "rows": {"heads": 4, "scores": 3}, "samples": {}}
    assert load_run(tmp_path / "run").manifest == manifest
    with Run.open(tmp_path / "run", IDENTITY) as run:
        assert run.status == "complete"
        run.write([2], chunk_tables([2]))
        assert run.status == "running"  # more examples: no longer complete until finished again
        assert run.finish()["counts"]["examples"] == 3


def test_resuming_with_other_package_versions_warns(tmp_path, monkeypatch):
    Run.open(tmp_path / "run", IDENTITY).close()
    versions = {**run_module.package_versions(), "torch": "0.0.1"}
    monkeypatch.setattr(run_module, "package_versions", lambda: versions)
    with pytest.warns(StoreWarning, match=r"other package versions \(torch .* → 0\.0\.1\)"):
        Run.open(tmp_path / "run", IDENTITY).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = Run.open(tmp_path / "run", IDENTITY)  # recorded: the same versions again do not warn
    run.close()
    assert run.manifest["version_changes"][0]["versions"]["torch"] == "0.0.1"


def test_samples_are_float16_and_checked(tmp_path):
    attention = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    with Run.open(tmp_path / "run", IDENTITY) as run:
        run.write([0, 1], chunk_tables([0, 1]), samples={"attention": {1: attention}})
        run.write([2], chunk_tables([2]), samples={"attention": {2: attention.numpy().astype(np.float64)}})
        with pytest.raises(StoreError, match="not among this chunk's ids"):
            run.write([3], chunk_tables([3]), samples={"attention": {0: attention}})
        with pytest.raises(StoreError, match="float16"):
            run.write([3], chunk_tables([3]), samples={"attention": {3: np.full((2, 2), 1e6)}})
        assert sorted(p.name for p in (tmp_path / "run" / "tables" / "scores").iterdir()) == [
            "000000.parquet",
            "000001.parquet",
        ]  # refused before any file was written
    run = load_run(tmp_path / "run")
    assert run.samples() == {"attention": [1, 2]}
    stored = run.sample("attention", 1)
    assert stored.dtype == np.float16
    assert stored.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(stored, attention.numpy(), atol=1e-3)
    with pytest.raises(StoreError, match=r"no sample 'attention' for example 0 \(stored for 2 examples"):
        run.sample("attention", 0)
    assert run.counts()["samples"] == {"attention": 2}


def test_model_fingerprint():
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    second.load_state_dict(first.state_dict())
    assert model_fingerprint(first) == model_fingerprint(second)
    with torch.no_grad():
        second.bias[0] += 1e-6
    assert model_fingerprint(first) != model_fingerprint(second)
    assert model_fingerprint(first.to(torch.bfloat16)) != model_fingerprint(second)
