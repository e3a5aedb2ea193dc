"""Bad files and directories: each gets a one-line error (or warning) naming the file and what to do, and no
finished result is lost. Through load_run / Run.open / Run.write here; through Probe.run and the command line
in tests/test_probe_run.py."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attn_probe.cli import EXIT_BAD_INPUT, main
from attn_probe.store import (
    DiskFullError,
    NotARunError,
    Run,
    RunAccessError,
    StoreError,
    StoreWarning,
    TableSchemaError,
    load_run,
)
from attn_probe.store import chunks as chunks_module
from tests.store.faults import REASON, disk_fills_up, read_only, snapshot, unreadable
from tests.store.synthetic import IDENTITY, chunk_tables, expected_table, three_chunks

ALL = list(range(6))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def cli_error(capsys, arguments: list[str]) -> str:
    """Run the command line: it must exit 2 with exactly one line on stderr, no traceback; that line."""
    assert main(arguments) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    return line


def intact(root: Path, ids: list[int] = ALL) -> None:
    """The run reads back whole: every committed example, every file sound, tables as written."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        run = load_run(root)
    assert run.done() == set(ids)
    assert run.verify() == []
    for name in ("scores", "heads"):
        pd.testing.assert_frame_equal(run.table(name), expected_table(name, ids))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    three_chunks(root, samples=True)
    return root


# ------------------------------------------------------------------------------- unreadable files
@pytest.mark.parametrize(
    "relative", ["tables/scores/000001.parquet", "chunks/000001.json", "samples/attention/2.npy", "manifest.json"]
)
def test_an_unreadable_file_is_an_error_never_damage(run_dir, capsys, relative):
    before = snapshot(run_dir)
    with unreadable(run_dir / relative) as how:
        for attempt in (lambda: load_run(run_dir), lambda: Run.open(run_dir, IDENTITY)):
            with pytest.raises(RunAccessError) as error:
                attempt()
            message = one_line(error)
            assert f"cannot read {relative} of run {run_dir} (permission denied)" in message, (how, message)
            assert f"chmod -R u+rwX {run_dir}" in message
        line = cli_error(capsys, ["summary", str(run_dir)])
        assert line.startswith("attn-probe summary: error: cannot read") and relative in line
    # Nothing was dropped or deleted (before, an unreadable record was taken for damage: the chunk was deleted).
    assert snapshot(run_dir) == before
    intact(run_dir)


def test_an_unreadable_run_directory_is_an_error(run_dir, capsys):
    before = snapshot(run_dir)
    with unreadable(run_dir):
        for attempt in (lambda: load_run(run_dir), lambda: Run.open(run_dir, IDENTITY)):
            with pytest.raises(RunAccessError) as error:
                attempt()
            message = one_line(error)
            assert f"cannot read manifest.json of run {run_dir} (permission denied)" in message
            assert f"chmod -R u+rwX {run_dir}" in message
        assert "cannot read manifest.json" in cli_error(capsys, ["summary", str(run_dir)])
    assert snapshot(run_dir) == before
    intact(run_dir)


def test_a_file_unreadable_after_opening_names_itself_not_missing(run_dir):
    reader = load_run(run_dir, verify=False)
    with unreadable(run_dir / "tables" / "scores" / "000002.parquet"):
        with pytest.raises(RunAccessError, match=r"cannot read tables/scores/000002\.parquet .*permission denied"):
            reader.table("scores")
        assert [problem for problem in reader.verify() if "cannot be read" in problem] == [
            "chunk 000002: tables/scores/000002.parquet cannot be read (Permission denied)"
        ]
    pd.testing.assert_frame_equal(reader.table("scores"), expected_table("scores", ALL))


# ----------------------------------------------------------------------- truncated / wrong-schema chunks
def test_a_truncated_chunk_is_left_out_by_readers_and_redone_by_a_writer(run_dir):
    path = run_dir / "tables" / "heads" / "000001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(StoreWarning) as caught:
        reader = load_run(run_dir)
    (message,) = [str(w.message) for w in caught]
    assert "\n" not in message
    assert "chunk 000001.json is damaged: tables/heads/000001.parquet has" in message
    assert "it is left out (not read); Run.open (same identity) or the same command redoes them (examples [2, 3])" in (
        message
    )
    assert reader.done() == {0, 1, 4, 5}
    pd.testing.assert_frame_equal(reader.table("heads"), expected_table("heads", [0, 1, 4, 5]))
    with pytest.warns(StoreWarning, match=r"000001\.json is damaged.*dropped and its examples will be redone"):
        run = Run.open(run_dir, IDENTITY)
    with run:
        assert sorted(set(ALL) - run.done()) == [2, 3]
        run.write([2, 3], chunk_tables([2, 3]), samples={"attention": {2: np.full((1, 1, 2, 2), 0.5)}})
    intact(run_dir)


def forge(root: Path, relative: str, table: pa.Table) -> None:
    """Replace a committed Parquet file AND rewrite its commit record to match: a chunk that is consistent on
    disk (its sha256 holds) but whose columns clash with the other chunks'."""
    path = root / relative
    pq.write_table(table, path)
    data = path.read_bytes()
    record_path = root / "chunks" / f"{path.stem}.json"
    record = json.loads(record_path.read_text())
    name = path.parent.name
    record["tables"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), rows=table.num_rows)
    body = {key: value for key, value in record.items() if key != "checksum"}
    record["checksum"] = chunks_module._record_checksum(body)
    record_path.write_text(json.dumps(record))


def test_a_replaced_chunk_with_other_columns_is_caught_by_its_sha256(run_dir):
    pq.write_table(pa.table({"example_id": [2, 3], "other": ["x", "y"]}), run_dir / "tables/scores/000001.parquet")
    with pytest.warns(StoreWarning, match=r"chunk 000001\.json is damaged: tables/scores/000001\.parquet (has|does)"):
        assert load_run(run_dir).done() == {0, 1, 4, 5}


def test_a_chunk_whose_columns_clash_names_the_chunk_and_how_to_redo_it(run_dir, capsys):
    clash = pa.table({"example_id": pa.array([2, 2, 2, 3, 3, 3, 3], pa.int64()), "score": ["high"] * 7})
    forge(run_dir, "tables/scores/000001.parquet", clash)
    reader = load_run(run_dir)  # consistent on disk: not damage
    with pytest.raises(TableSchemaError) as error:
        reader.table("scores")
    message = one_line(error)
    assert "table 'scores' of run" in message and "cannot be read as one table" in message
    assert "tables/scores/000001.parquet has column 'score' as string, not double as in the chunks before it" in message
    assert "read it chunk by chunk with iter_table('scores')" in message
    assert "delete chunks/000001.json and run again" in message and "redo its examples [2, 3]" in message
    assert [len(frame) for frame in reader.iter_table("scores")] == [3, 7, 3]  # every chunk still readable
    with pytest.raises(TableSchemaError, match=r"has no column 'token' in tables/scores/000001\.parquet"):
        reader.table("scores", columns=["token"])
    with pytest.raises(StoreError, match=r"has no column 'tokn'; its columns: example_id, rank, score"):
        reader.table("scores", columns=["tokn"])  # a typo is not damage
    # What the message says to do: delete the record, open, redo.
    (run_dir / "chunks" / "000001.json").unlink()
    with Run.open(run_dir, IDENTITY) as run:
        run.write([2, 3], chunk_tables([2, 3]), samples={"attention": {2: np.full((1, 1, 2, 2), 0.5)}})
    intact(run_dir)


def test_a_write_that_would_make_a_table_unreadable_is_refused(run_dir):
    before = snapshot(run_dir)
    with Run.open(run_dir, IDENTITY) as run:
        clash = chunk_tables([6])
        clash["heads"]["entropy"] = clash["heads"]["entropy"].astype(str)
        with pytest.raises(TableSchemaError) as error:
            run.write([6], clash)
        message = one_line(error)
        assert message.startswith(f"table 'heads' cannot be written to run {run_dir}: this chunk has column 'entropy'")
        assert message.endswith(  # (pandas 3 strings are Arrow large_string)
            "string, not double as in the chunks before it; give each column the same type in every write (nothing "
            "of this chunk was written)"
        )
        assert run.done() == set(ALL)
        widened = chunk_tables([6])  # a column all-null in a chunk, or a new column, still combines
        widened["scores"]["rank"] = pd.array([None] * len(widened["scores"]), dtype="Int64")
        widened["heads"]["note"] = "new"
        assert run.write([6], widened) == 3
        assert run.table("heads")["note"].isna().sum() == 12
        assert run.table("heads")["note"].tolist()[-2:] == ["new", "new"]
    assert {k: v for k, v in snapshot(run_dir).items() if "000003" not in k and k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }


# -------------------------------------------------------------------------------------- the manifest
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"format": "attn_probe.run", "identity": {"mod', r"manifest\.json is not valid JSON \(damaged, or not"),
        ("\x00\x01 binary junk", r"manifest\.json is not valid JSON"),
        ("[1, 2, 3]", r"manifest\.json is not a JSON object, so not an attn_probe run manifest"),
        ('{"format": "attn_probe.run", "format_version": 1}', r"manifest\.json has no identity \(damaged\)"),
        ('{"format": "attn_probe.run", "format_version": 99, "identity": {}}', r"format version 99.*upgrade"),
    ],
    ids=["cut-short", "binary", "array", "no-identity", "newer"],
)
def test_a_bad_manifest_is_refused_and_nothing_is_touched(run_dir, capsys, content, match):
    (run_dir / "manifest.json").write_text(content)
    before = snapshot(run_dir)
    for attempt in (lambda: load_run(run_dir), lambda: Run.open(run_dir, IDENTITY)):
        with pytest.raises(NotARunError, match=match) as error:
            attempt()
        one_line(error)
    assert snapshot(run_dir) == before  # the committed chunks are all still there
    assert "attn-probe summary: error:" in cli_error(capsys, ["summary", str(run_dir)])


# ------------------------------------------------------------------------------ directories not ours
@pytest.mark.parametrize(
    ("files", "match"),
    [
        (
            {"notes.txt": "mine", "data/x.csv": "a,b"},
            r"is not empty and has no manifest\.json \(found data, notes\.txt\)",
        ),
        (
            {"manifest.json": '{"name": "another tool", "version": 3}'},
            r"not an attn_probe run manifest \(format None\)",
        ),
        ({".lock": '{"owner": "another tool"}'}, r"has no manifest\.json \(found \.lock\)"),
        ({"results.tmp": "theirs"}, r"has no manifest\.json \(found results\.tmp\)"),
    ],
    ids=["random-files", "foreign-manifest", "foreign-lock", "foreign-tmp"],
)
def test_a_directory_of_another_tool_is_never_written_into(tmp_path, capsys, files, match):
    root = tmp_path / "theirs"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    before = snapshot(root)
    with pytest.raises(NotARunError, match=match) as error:
        Run.open(root, IDENTITY)
    assert "choose" in one_line(error)
    assert snapshot(root) == before  # not even a lock file was made
    assert "attn-probe summary: error:" in cli_error(capsys, ["summary", str(root)])


def test_what_a_first_open_killed_early_leaves_is_ours(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / ".lock").write_text("process 4242")
    (root / ".manifest.json.k2j3abcd.tmp").write_text('{"format": "attn_')
    with Run.open(root, IDENTITY) as run:
        run.write([0], chunk_tables([0]))
    assert not (root / ".manifest.json.k2j3abcd.tmp").exists()


def test_files_of_others_inside_a_run_are_left_alone_and_never_read(run_dir):
    foreign = {
        "tables/notes.txt": b"mine",
        "tables/scores/mine.parquet": b"PAR1 theirs",
        "tables/scores/000001.parquet.bak": b"a backup",
        "chunks/README": b"mine",
        "samples/attention/plot.png": b"\x89PNG",
    }
    for relative, data in foreign.items():
        (run_dir / relative).write_bytes(data)
    intact(run_dir)  # a reader neither reads nor warns about them
    with pytest.warns(StoreWarning) as caught:
        run = Run.open(run_dir, IDENTITY)
    run.close()
    (message,) = [str(w.message) for w in caught]
    assert "holds files attn_probe did not write (chunks/README, samples/attention/plot.png, tables/notes.txt" in (
        message
    )
    assert "left as they are, never read; move them out of the run directory" in message
    assert all((run_dir / relative).read_bytes() == data for relative, data in foreign.items())
    intact(run_dir)


# ------------------------------------------------------------------------------- read-only directories
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only-disk", "no-permission"])
def test_a_read_only_run_directory_is_refused_for_writing_and_still_read(run_dir, code):
    before = snapshot(run_dir)
    with read_only(run_dir, code) as code:
        with pytest.raises(RunAccessError) as error:
            Run.open(run_dir, IDENTITY)
        message = one_line(error)
        assert message.startswith("cannot write ") and f"of run {run_dir} ({REASON[code]})" in message
        assert message.endswith("; nothing was changed")
        intact(run_dir)  # reading needs no write access
    assert snapshot(run_dir) == before
    with Run.open(run_dir, IDENTITY) as run:  # writable again: resumes as if nothing happened
        run.write([6], chunk_tables([6]))
    intact(run_dir, list(range(7)))


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only-disk", "no-permission"])
def test_a_new_run_under_a_read_only_folder_is_refused(tmp_path, code):
    root = tmp_path / "parent" / "run"
    root.parent.mkdir()
    with read_only(root, code) as code, pytest.raises(RunAccessError) as error:
        Run.open(root, IDENTITY)
    message = one_line(error)
    assert f"cannot write {root} ({REASON[code]})" in message and "choose" in message
    assert message.endswith("nothing was written")
    assert not root.exists()


def test_a_run_directory_that_turns_read_only_mid_run_keeps_its_chunks(run_dir):
    run = Run.open(run_dir, IDENTITY)
    with read_only(run_dir, errno.EROFS) as code, pytest.raises(RunAccessError) as error:
        run.write([6, 7], chunk_tables([6, 7]))
    run.close()
    message = one_line(error)
    assert f"of run {run_dir} ({REASON[code]})" in message
    assert message.endswith("the 6 examples committed so far are kept")
    intact(run_dir)


# ------------------------------------------------------------------------------------------ full disk
def write_in_chunks(run: Run, ids: list[int], size: int = 2) -> None:
    todo = [i for i in ids if i not in run.done()]
    for start in range(0, len(todo), size):
        part = todo[start : start + size]
        chosen = {i: np.full((1, 1, 2, 2), 0.5) for i in part if i % 2 == 0}
        run.write(part, chunk_tables(part), samples={"attention": chosen})


@pytest.mark.parametrize("fails", ["tables/heads", "samples/", "chunks/", "manifest.json"])
def test_a_full_disk_mid_run_keeps_the_committed_chunks_and_resumes(tmp_path, fails):
    root = tmp_path / "run"
    run = Run.open(root, IDENTITY)
    with disk_fills_up(after_chunks=2, fails=fails) as refused, pytest.raises(DiskFullError) as error:
        write_in_chunks(run, list(range(10)))
    run.close()
    message = one_line(error)
    assert refused, "the disk never filled up"
    committed = 4  # two chunks; a manifest that cannot be written fails the chunk after its record: kept too
    assert message.startswith(f"the disk holding run {root} is full (no space left on device, writing ")
    assert f"writing {Path(refused[0]).relative_to(root).as_posix()})" in message
    assert "free some space on it, then run the same command again (or Run.open with the same identity) to resume" in (
        message
    )
    assert message.endswith(f"the {committed} examples committed so far are kept")
    # The chunks committed before are sound; nothing of the failed chunk is left behind (no temporary file,
    # no data file that a reader of the folders could take for complete).
    intact(root, list(range(committed)))
    assert not [path for path in root.rglob("*") if path.name.endswith(".tmp")]
    assert not [path for path in root.rglob("000002.*")]
    # Space freed: the same writer resumes and ends with the tables of an uninterrupted run.
    with Run.open(root, IDENTITY) as resumed:
        assert resumed.done() == set(range(committed))
        write_in_chunks(resumed, list(range(10)))
        resumed.finish()
    reference = tmp_path / "reference"
    with Run.open(reference, IDENTITY) as uninterrupted:
        write_in_chunks(uninterrupted, list(range(10)))
        uninterrupted.finish()
    compare_runs(root, reference)


def compare_runs(path: Path, reference: Path) -> None:
    mine, theirs = load_run(path), load_run(reference)
    assert mine.status == theirs.status == "complete"
    assert mine.done() == theirs.done()
    assert mine.tables() == theirs.tables()
    for name in theirs.tables():
        pd.testing.assert_frame_equal(mine.table(name), theirs.table(name), obj=name)
    assert mine.samples() == theirs.samples()
    for example_id in theirs.samples("attention"):
        np.testing.assert_array_equal(mine.sample("attention", example_id), theirs.sample("attention", example_id))
    assert mine.verify() == []


def _mount_tmpfs(target: Path, size: str) -> bool:
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


def test_a_really_full_disk_small_tmpfs(tmp_path):
    """The same, on a real 256 KiB tmpfs: the kernel's ENOSPC, wherever in a write it comes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or not _mount_tmpfs(disk, "256k"):
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs); the injected full disk is tested above")
    try:
        root = disk / "run"
        big = np.random.default_rng(0).random((2, 4, 64, 64))  # 64 KiB a sample in float16: the disk fills fast
        with Run.open(root, IDENTITY) as run, pytest.raises(DiskFullError) as error:
            for example_id in range(40):
                run.write([example_id], chunk_tables([example_id]), samples={"attention": {example_id: big}})
        message = one_line(error)
        committed = load_run(root).done()
        assert 0 < len(committed) < 40
        assert message.startswith(f"the disk holding run {root} is full (no space left on device, writing ")
        assert message.endswith(f"the {len(committed)} examples committed so far are kept")
        intact_ids = sorted(committed)
        reader = load_run(root)
        assert reader.verify() == []
        pd.testing.assert_frame_equal(reader.table("scores"), expected_table("scores", intact_ids))
        assert not [path for path in root.rglob("*") if path.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)  # space freed
        with Run.open(root, IDENTITY) as run:
            for example_id in sorted(set(range(40)) - run.done()):
                run.write([example_id], chunk_tables([example_id]), samples={"attention": {example_id: big}})
        reader = load_run(root)
        assert reader.verify() == []
        pd.testing.assert_frame_equal(reader.table("scores"), expected_table("scores", list(range(40))))
        np.testing.assert_array_equal(reader.sample("attention", 39), big.astype(np.float16))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
