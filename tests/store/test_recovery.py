"""Interrupted and damaged runs: leftovers removed, damaged chunks detected and redone, kill -9 resumed."""

import builtins
import json
import os
import re
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

from attn_probe.store import CorruptChunkError, Run, StoreWarning, load_run
from tests.store.synthetic import IDENTITY, chunk_tables, expected_table, flip_byte, three_chunks

REPO = Path(__file__).resolve().parents[2]


def redo(path: Path, match: str) -> Run:
    """Resume: the damaged chunk must be named in a warning, and its examples left to redo."""
    with pytest.warns(StoreWarning, match=match):
        run = Run.open(path, IDENTITY)
    todo = sorted(set(range(6)) - run.done())
    assert todo == [2, 3]
    run.write(todo, chunk_tables(todo))
    for name in ("scores", "heads"):
        pd.testing.assert_frame_equal(run.table(name), expected_table(name, list(range(6))))
    return run


def test_flipped_byte_in_a_committed_parquet_is_detected_and_redone(tmp_path):
    three_chunks(tmp_path / "run")
    flip_byte(tmp_path / "run" / "tables" / "heads" / "000001.parquet")
    with pytest.warns(
        StoreWarning, match=r"chunk 000001\.json is damaged: .*000001\.parquet does not match its sha256"
    ):
        reader = load_run(tmp_path / "run")
    assert reader.done() == {0, 1, 4, 5}  # left out, never read
    pd.testing.assert_frame_equal(reader.table("heads"), expected_table("heads", [0, 1, 4, 5]))
    assert (tmp_path / "run" / "chunks" / "000001.json").exists()  # a reader changes nothing
    redo(tmp_path / "run", r"000001\.json is damaged.*dropped and its examples will be redone \(examples \[2, 3\]\)")
    assert not (tmp_path / "run" / "chunks" / "000001.json").exists()
    assert not (tmp_path / "run" / "tables" / "heads" / "000001.parquet").exists()
    assert (tmp_path / "run" / "chunks" / "000003.json").exists()


def test_damage_after_opening_is_never_read(tmp_path):
    three_chunks(tmp_path / "run")
    reader = load_run(tmp_path / "run", verify=False)
    flip_byte(tmp_path / "run" / "tables" / "scores" / "000001.parquet")  # same size: only the sha256 sees it
    assert load_run(tmp_path / "run", verify=False).done() == set(range(6))
    with pytest.raises(CorruptChunkError) as error:
        reader.table("scores")
    message = str(error.value)
    assert "\n" not in message
    assert "tables/scores/000001.parquet" in message
    assert "does not match its sha256" in message
    assert "redo its examples [2, 3]" in message
    frames = reader.iter_table("scores")
    next(frames)
    with pytest.raises(CorruptChunkError):
        next(frames)


def test_missing_or_truncated_files_are_detected(tmp_path):
    three_chunks(tmp_path / "run")
    (tmp_path / "run" / "tables" / "scores" / "000001.parquet").unlink()
    redo(tmp_path / "run", r"000001\.json is damaged: tables/scores/000001\.parquet is missing").close()
    three_chunks(tmp_path / "other")
    path = tmp_path / "other" / "tables" / "scores" / "000001.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    redo(tmp_path / "other", r"has \d+ bytes, \d+ were committed").close()


def test_damaged_commit_record_is_detected(tmp_path):
    three_chunks(tmp_path / "run")
    record = tmp_path / "run" / "chunks" / "000001.json"
    payload = json.loads(record.read_text())
    payload["example_ids"] = [2, 30]  # valid JSON, wrong content: the record's own checksum catches it
    record.write_text(json.dumps(payload))
    redo(tmp_path / "run", r"000001\.json is damaged: its commit record is damaged \(its checksum").close()
    three_chunks(tmp_path / "other")
    record = tmp_path / "other" / "chunks" / "000001.json"
    record.write_text(record.read_text()[:50])
    redo(tmp_path / "other", r"its record is not a JSON object \(cut short").close()


def test_corrupt_sample_sends_its_chunk_back(tmp_path):
    three_chunks(tmp_path / "run", samples=True)
    flip_byte(tmp_path / "run" / "samples" / "attention" / "2.npy")
    with pytest.warns(StoreWarning, match=r"samples/attention/2\.npy does not match"):
        run = Run.open(tmp_path / "run", IDENTITY)
    assert run.samples("attention") == [0, 4]
    run.write([2, 3], chunk_tables([2, 3]), samples={"attention": {2: np.full((1, 1, 2, 2), 0.5)}})
    np.testing.assert_array_equal(run.sample("attention", 2), np.full((1, 1, 2, 2), 0.5, dtype=np.float16))
    run.close()


def test_half_written_leftovers_are_ignored_then_removed(tmp_path):
    root = tmp_path / "run"
    three_chunks(root, samples=True)
    # What a kill can leave: a table file of a chunk without its record, temporary files of interrupted
    # atomic writes (a table, a sample, a record, the manifest), a sample of an uncommitted example.
    chunk_tables([6])["scores"].to_parquet(root / "tables" / "scores" / "000003.parquet")
    leftovers = [
        root / "tables" / "scores" / "000003.parquet",
        root / "tables" / "heads" / ".000003.parquet.k2j3.tmp",
        root / "samples" / "attention" / "6.npy",
        root / "chunks" / ".000003.json.a8f1.tmp",
        root / ".manifest.json.x1y2.tmp",
    ]
    for path in leftovers[1:]:
        path.write_bytes(b"PAR1 half")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # leftovers are not damage: no warning
        reader = load_run(root)
    assert reader.done() == set(range(6))
    pd.testing.assert_frame_equal(reader.table("scores"), expected_table("scores", list(range(6))))
    assert reader.samples("attention") == [0, 2, 4]
    assert all(path.exists() for path in leftovers)  # a reader removes nothing: a writer may be at work
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = Run.open(root, IDENTITY)
    assert not any(path.exists() for path in leftovers)
    assert run.write([6], chunk_tables([6])) == 3
    pd.testing.assert_frame_equal(run.table("scores"), expected_table("scores", list(range(7))))
    run.close()


WRITER = textwrap.dedent(
    """
    import os, signal, sys, time

    from attn_probe.store import Run
    from tests.store.synthetic import IDENTITY, chunk_tables

    path, n_examples, chunk_size, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    if len(sys.argv) > 5:  # "<path suffix>:before|after": kill -9 this process at that rename of an atomic write
        target, moment = sys.argv[5].rsplit(":", 1)
        real_replace = os.replace
        def replace(source, destination):
            hit = os.fspath(destination).endswith(target)
            if hit and moment == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(source, destination)
            if hit and moment == "after":
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
    if pause:  # widen the windows inside and between file writes, where a kill leaves a half-written chunk
        real_fsync = os.fsync
        def slow_fsync(fd):
            real_fsync(fd)
            time.sleep(pause)
        os.fsync = slow_fsync

    with Run.open(path, IDENTITY) as run:
        todo = [i for i in range(n_examples) if i not in run.done()]
        for start in range(0, len(todo), chunk_size):
            ids = todo[start : start + chunk_size]
            chosen = {i: [[float(i), 0.5], [0.25, 1.0]] for i in ids if i % 6 == 0}  # the chosen sample
            run.write(ids, chunk_tables(ids), samples={"attention": chosen})
            print("committed", ids[-1], flush=True)
        run.finish()
    print("finished", flush=True)
    """
)


def test_kill_9_at_any_moment_then_resume_equals_an_uninterrupted_run(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(path: Path, chunk_size: int, pause: float) -> subprocess.Popen:
        command = [sys.executable, str(script), str(path), "40", str(chunk_size), str(pause)]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    interrupted = tmp_path / "interrupted"
    kills = 0
    for delay in (0.0, 0.013, 0.029, 0.041):  # land the kill at different points of a chunk's writes
        process = start(interrupted, 2, 0.005)
        line = process.stdout.readline()  # at least one chunk committed in every session
        assert line.startswith("committed"), f"writer failed: {line!r} {process.stderr.read()}"
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        returncode = process.wait(timeout=60)
        process.stdout.close()
        process.stderr.close()
        if returncode == 0:  # it finished first: nothing left to interrupt
            break
        assert returncode == -signal.SIGKILL
        kills += 1
        assert load_run(interrupted).status == "running"
    assert kills >= 3
    partial = load_run(interrupted).done()
    assert 0 < len(partial) < 40

    process = start(interrupted, 3, 0.0)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "StoreWarning" not in err  # nothing was damaged: leftovers are silently removed

    reference = tmp_path / "reference"
    process = start(reference, 40, 0.0)  # one chunk, never interrupted
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err

    resumed, uninterrupted = load_run(interrupted), load_run(reference)
    assert resumed.status == uninterrupted.status == "complete"
    assert resumed.done() == uninterrupted.done() == set(range(40))
    for name in ("scores", "heads"):
        table = resumed.table(name)
        pd.testing.assert_frame_equal(table, uninterrupted.table(name))
        pd.testing.assert_frame_equal(table, expected_table(name, list(range(40))))
    assert resumed.counts()["rows"] == uninterrupted.counts()["rows"]
    records = sorted((interrupted / "chunks").glob("*.json"))
    ids = [i for record in records for i in json.loads(record.read_text())["example_ids"]]
    assert len(ids) == len(set(ids)) == 40  # no example committed twice
    assert resumed.samples() == uninterrupted.samples() == {"attention": list(range(0, 40, 6))}
    for example_id in resumed.samples("attention"):
        np.testing.assert_array_equal(
            resumed.sample("attention", example_id), uninterrupted.sample("attention", example_id)
        )
    assert resumed.verify() == []
    leftovers = [p for p in interrupted.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("target", "moment", "committed"),
    [
        ("tables/scores/000003.parquet", "after", 6),  # a whole table file of chunk 3, no record
        ("samples/attention/6.npy", "before", 6),  # chunk 3's tables written, its sample a temporary file
        ("chunks/000003.json", "before", 6),  # every file of chunk 3 written, its record a temporary file
        ("chunks/000003.json", "after", 8),  # committed; the manifest not yet updated
    ],
    ids=["after-a-table", "inside-a-sample", "before-the-record", "after-the-record"],
)
def test_kill_9_at_each_step_of_a_commit(tmp_path, target, moment, committed):
    """A kill between a chunk's files and its commit record (or inside either) never yields a chunk that is
    not complete: readers see the chunks before it, whole, and the next writer removes what is left."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "run"
    command = [sys.executable, str(script), str(root), "10", "2", "0", f"{target}:{moment}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}
    if moment == "before":
        assert any(name.endswith(".tmp") and target.rsplit("/", 1)[1] in name for name in left)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an interrupted write is not damage
        reader = load_run(root)
    assert reader.status == "running"
    assert reader.done() == set(range(committed))
    assert reader.verify() == []
    for name in ("scores", "heads"):
        pd.testing.assert_frame_equal(reader.table(name), expected_table(name, list(range(committed))))
    assert reader.samples("attention") == [i for i in range(committed) if i % 6 == 0]
    assert reader.manifest["counts"]["examples"] <= committed  # the manifest never runs ahead of the records
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = Run.open(root, IDENTITY)
    with run:
        todo = sorted(set(range(10)) - run.done())
        for start in range(0, len(todo), 2):
            ids = todo[start : start + 2]
            run.write(
                ids,
                chunk_tables(ids),
                samples={"attention": {i: [[float(i), 0.5], [0.25, 1.0]] for i in ids if i % 6 == 0}},
            )
        run.finish()
    resumed = load_run(root)
    assert resumed.verify() == []
    for name in ("scores", "heads"):
        pd.testing.assert_frame_equal(resumed.table(name), expected_table(name, list(range(10))))
    referenced = {stored.path for chunk in resumed._chunks.values() for stored in chunk.files()}
    on_disk = {
        path.relative_to(root).as_posix()
        for folder in ("tables", "samples")
        for path in (root / folder).rglob("*")
        if path.is_file()
    }
    assert on_disk == referenced  # nothing of the interrupted write is left
    assert not [path for path in root.rglob("*") if path.name.endswith(".tmp")]


def test_every_file_is_written_to_a_temporary_fsynced_and_renamed(tmp_path, monkeypatch):
    """Audit every write of a run's life (create, chunks with samples, finish, resume, repair): each file is
    written to a temporary file beside it, fsynced, renamed onto its name, and its folder fsynced; a chunk's
    record is renamed after all its files, the manifest after the record."""
    root = (tmp_path / "run").resolve()
    events: list[tuple[str, str]] = []
    fds: dict[int, str] = {}
    real_open, real_fsync, real_replace, real_builtin_open = os.open, os.fsync, os.replace, builtins.open

    def inside(path) -> str | None:
        if isinstance(path, int):
            return None
        resolved = Path(os.fspath(path)).resolve()
        return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else None

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        relative = inside(path)
        if relative is not None:
            fds[fd] = relative
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                events.append(("write", relative))
        return fd

    def spy_fsync(fd):
        real_fsync(fd)
        if fd in fds:
            events.append(("fsync", fds[fd]))

    def spy_replace(source, destination):
        real_replace(source, destination)
        if inside(destination) is not None:
            events.append(("rename", f"{inside(source)} -> {inside(destination)}"))

    def spy_builtin_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and inside(file) is not None:
            events.append(("write", inside(file)))
        return real_builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(builtins, "open", spy_builtin_open)
    three_chunks(root, samples=True)
    with Run.open(root, IDENTITY) as run:
        run.write([6], chunk_tables([6]), samples={"attention": {6: np.ones((1, 1, 2, 2))}})
        run.finish()
    monkeypatch.undo()

    temporary = re.compile(r"^(?P<folder>(.*/)?)\.(?P<name>[^/]+)\.[a-z0-9_]+\.tmp$")
    renamed: dict[str, int] = {}
    for index, (kind, what) in enumerate(events):
        if kind == "write":
            assert what == ".lock" or temporary.match(what), f"{what} written in place"
        if kind == "rename":
            source, destination = what.split(" -> ")
            match = temporary.match(source)
            assert match and match["folder"] + match["name"] == destination, what
            assert ("fsync", source) in events[:index], f"{source} renamed before it was fsynced"
            folder = destination.rsplit("/", 1)[0] if "/" in destination else "."
            assert ("fsync", folder) in events[index:], f"{folder} not fsynced after {destination}"
            renamed[destination] = index
    on_disk = {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()} - {".lock"}
    assert on_disk <= set(renamed), on_disk - set(renamed)  # every file arrived by a rename
    manifest_renames = [index for index, (kind, what) in enumerate(events) if what.endswith("-> manifest.json")]
    records = sorted(name for name in renamed if name.startswith("chunks/"))
    assert len(records) == 4 and len(manifest_renames) >= 6  # what was audited: 4 chunks, a manifest per step
    for record in records:
        chunk = json.loads((root / record).read_text())
        files = [stored["path"] for stored in chunk["tables"].values()]
        files += [stored["path"] for by_id in chunk["samples"].values() for stored in by_id.values()]
        assert all(renamed[path] < renamed[record] for path in files), record  # the record comes last
        assert any(index > renamed[record] for index in manifest_renames)
