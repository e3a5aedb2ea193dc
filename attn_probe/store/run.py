"""A run on disk: a manifest and Parquet tables written in chunks as examples finish; resumable.

    run = Run.open("runs/sst2-bert", identity={"model": "bert-base", "fingerprint": fp, "methods": [...]})
    for batch in batches:
        todo = [i for i in batch.ids if i not in run.done()]
        ...
        run.write(todo, {"scores": scores, "agreement": agreement}, samples={"attention": {7: weights_7}})
    run.finish()

    run = load_run("runs/sst2-bert")          # read-only
    run.table("scores", columns=[...], filters=[("method", "==", "integrated_gradients")])
    for frame in run.iter_table("scores"):     # one chunk at a time: memory stays flat
        ...

Layout::

    <run>/manifest.json                   identity, settings, versions, status, counts (see manifest.py)
    <run>/chunks/000007.json              commit record of chunk 7: example ids, files, sizes, sha256
    <run>/tables/<table>/000007.parquet   chunk 7's rows of <table>
    <run>/samples/<name>/<example_id>.npy full matrices of a chosen example, float16
    <run>/.lock                           held (flock) by the one process writing the run

A run killed at any moment, ``kill -9`` included, resumes where it stopped: only chunks with a commit record
count, files without one are removed when the run is opened again, and a committed chunk whose files are
missing or no longer match their sha256 is reported (a :class:`StoreWarning` naming it) and dropped, so its
examples are redone. Tables are read back sorted by ``example_id`` (stable: the rows of one example keep
their order), so they equal those of an uninterrupted run however the examples were chunked.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from attn_probe.store import chunks as _chunks
from attn_probe.store.chunks import CHUNKS, EXAMPLE_ID, Chunk, atomic_write_json, read_json
from attn_probe.store.errors import (
    DuplicateExampleError,
    NotARunError,
    ReadOnlyRunError,
    RunBusyError,
    RunMismatchError,
    StoreError,
    StoreWarning,
)
from attn_probe.store.manifest import (
    check_manifest,
    identity_differences,
    new_manifest,
    normalize,
    now,
    package_versions,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one writer per run is then the caller's duty
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
LOCK = ".lock"


def _sorted_by_example(frame: pd.DataFrame) -> pd.DataFrame:
    if EXAMPLE_ID in frame.columns and not frame[EXAMPLE_ID].is_monotonic_increasing:
        frame = frame.sort_values(EXAMPLE_ID, kind="stable")
    return frame.reset_index(drop=True)


class Run:
    """A run directory. Make one with :meth:`Run.open` (create or resume, writable) or :func:`load_run`."""

    def __init__(self, root: Path, manifest: dict[str, Any], chunks: dict[int, Chunk], lock: Any | None) -> None:
        self._root = root
        self._manifest = manifest
        self._chunks = chunks
        self._lock = lock
        self._done = {example_id for chunk in chunks.values() for example_id in chunk.example_ids}
        self._session_start = time.monotonic()
        self._elapsed_before = float(manifest.get("elapsed_s") or 0.0)
        self._next = max(chunks, default=-1) + 1

    # ----------------------------------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        identity: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        *,
        verify: bool = True,
    ) -> Run:
        """Create the run directory ``path``, or resume it if it holds a run with the same ``identity``.

        ``identity``: JSON data that must match to resume (model name/path and fingerprint, methods, target,
        every setting that changes results); a different one raises :class:`RunMismatchError` naming the keys.
        ``settings``: free JSON data recorded in the manifest (replaced when given on resume), never compared.
        ``verify``: check every committed file's sha256 on resume (False: sizes only, for very large runs).
        Leftovers of an interrupted write are removed; a damaged chunk is dropped with a :class:`StoreWarning`
        and its examples leave :meth:`done`. The returned run holds a lock until :meth:`close`.
        """
        identity = normalize(dict(identity), "identity")
        settings = normalize(dict(settings), "settings") if settings is not None else None
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise NotARunError(f"{root} is a file, not a run directory: choose a directory")
        _refuse_strangers(root)  # before the lock file is made: a refused directory is left as it was
        root.mkdir(parents=True, exist_ok=True)
        lock = _acquire_lock(root)
        try:
            manifest = _read_manifest(root) if (root / MANIFEST).exists() else None
            if manifest is None:
                _refuse_strangers(root)
                manifest = new_manifest(identity, settings or {})
            else:
                differences = identity_differences(manifest["identity"], identity)
                if differences:
                    raise RunMismatchError(
                        f"run directory {root} was made for a different run: {'; '.join(differences)}; "
                        "choose another directory, or delete this one to start over"
                    )
                if settings is not None:
                    manifest["settings"] = settings
                _note_versions(root, manifest)
            chunks = _load_chunks(root, full=verify, repair=True)
            run = cls(root, manifest, chunks, lock)
            run._manifest["sessions"] = int(run._manifest.get("sessions") or 0) + 1
            run._save_manifest()
            for folder in (_chunks.CHUNKS, _chunks.TABLES, _chunks.SAMPLES):
                (root / folder).mkdir(exist_ok=True)
            return run
        except BaseException:
            _release_lock(lock)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Run:
        """A read-only run; see :func:`load_run`."""
        root = Path(path)
        if not root.is_dir():
            what = "is a file" if root.exists() else "does not exist"
            raise NotARunError(f"no run at {root}: the directory {what}")
        if not (root / MANIFEST).is_file():
            raise NotARunError(f"{root} is not an attn_probe run: {MANIFEST} is missing")
        manifest = _read_manifest(root)
        return cls(root, manifest, _load_chunks(root, full=verify, repair=False), None)

    # ------------------------------------------------------------------------------------ properties
    @property
    def path(self) -> Path:
        return self._root

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as it stands (counts included)."""
        return copy.deepcopy(self._manifest)

    @property
    def identity(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest["identity"])

    @property
    def settings(self) -> dict[str, Any]:
        return copy.deepcopy(self._manifest.get("settings") or {})

    @property
    def status(self) -> str:
        return str(self._manifest.get("status"))

    @property
    def readonly(self) -> bool:
        return self._lock is None

    def done(self) -> set[int]:
        """Ids of the examples committed so far (a copy)."""
        return set(self._done)

    def tables(self) -> list[str]:
        """Names of the tables that hold at least one committed chunk, sorted."""
        return sorted({name for chunk in self._chunks.values() for name in chunk.tables})

    def samples(self, name: str | None = None) -> list[int] | dict[str, list[int]]:
        """Example ids with a stored sample ``name`` (sorted); without a name, every sample name → its ids."""
        found: dict[str, set[int]] = {}
        for chunk in self._chunks.values():
            for sample_name, by_id in chunk.samples.items():
                found.setdefault(sample_name, set()).update(by_id)
        if name is not None:
            return sorted(found.get(name, ()))
        return {sample_name: sorted(ids) for sample_name, ids in sorted(found.items())}

    def counts(self) -> dict[str, Any]:
        """Examples, chunks, rows per table and samples per name, from the commit records."""
        rows: dict[str, int] = {}
        samples: dict[str, int] = {}
        for chunk in self._chunks.values():
            for name, stored in chunk.tables.items():
                rows[name] = rows.get(name, 0) + int(stored.rows or 0)
            for name, by_id in chunk.samples.items():
                samples[name] = samples.get(name, 0) + len(by_id)
        return {
            "examples": len(self._done),
            "chunks": len(self._chunks),
            "rows": dict(sorted(rows.items())),
            "samples": dict(sorted(samples.items())),
        }

    # --------------------------------------------------------------------------------------- writing
    def write(
        self,
        example_ids: Sequence[int],
        tables: Mapping[str, pd.DataFrame],
        samples: Mapping[str, Mapping[int, Any]] | None = None,
    ) -> int | None:
        """Commit one chunk: the rows of ``tables`` for ``example_ids`` (and their chosen samples), atomically.

        Every frame needs an integer ``example_id`` column whose values are among ``example_ids`` (an id may
        have no rows: it is still done). ``samples``: ``{name: {example_id: array}}``, full matrices of the
        chosen examples, stored as float16 (numpy arrays or torch tensors). An id already committed, or given
        twice, raises :class:`DuplicateExampleError` and nothing is written. Returns the chunk number (None
        when ``example_ids`` is empty: nothing to commit).
        """
        self._writable()
        ids = [_as_id(example_id) for example_id in example_ids]
        if not ids:
            return None
        seen: set[int] = set()
        twice = sorted({example_id for example_id in ids if example_id in seen or seen.add(example_id)})
        if twice:
            raise DuplicateExampleError(f"example ids {twice[:5]} appear twice in one write: each id is written once")
        again = sorted(self._done.intersection(ids))
        if again:
            raise DuplicateExampleError(
                f"examples {again[:5]} are already committed to run {self._root}: skip the ids in run.done()"
            )
        id_set = set(ids)
        frames = {
            _chunks.check_name(name, "table"): _chunks.check_frame(name, frame, id_set)
            for name, frame in tables.items()
        }
        arrays: dict[str, dict[int, Any]] = {}
        for name, by_id in (samples or {}).items():
            _chunks.check_name(name, "sample")
            arrays[name] = {}
            for example_id, array in by_id.items():
                key = _as_id(example_id)
                if key not in id_set:
                    raise StoreError(f"sample {name!r} is for example {key}, which is not among this chunk's ids")
                arrays[name][key] = array
        number = self._next
        chunk = _chunks.write_chunk(self._root, number, ids, frames, arrays, now())
        self._next = number + 1
        self._chunks[number] = chunk
        self._done.update(ids)
        if self._manifest.get("status") == "complete":
            self._manifest["status"] = "running"
            self._manifest["finished"] = None
        self._save_manifest()
        return number

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Mark the run complete: status, counts, elapsed seconds, ``extra`` (JSON data) merged in. The manifest."""
        self._writable()
        self._manifest["status"] = "complete"
        self._manifest["finished"] = now()
        if extra:
            self._manifest.setdefault("extra", {}).update(normalize(dict(extra), "extra"))
        self._save_manifest()
        return self.manifest

    def close(self) -> None:
        """Release the writer's lock (a read-only run has none). The run can still be read."""
        if self._lock is not None:
            _release_lock(self._lock)
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "writable"
        return f"Run({str(self._root)!r}, {self.status}, {len(self._done)} examples, {mode})"

    # --------------------------------------------------------------------------------------- reading
    def iter_table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        example_ids: Sequence[int] | set[int] | None = None,
    ) -> Iterator[pd.DataFrame]:
        """The committed rows of table ``name``, one DataFrame per chunk: only one chunk is in memory at a time.

        Chunks come in the order of their first example id, each sorted by ``example_id`` (stable: the rows of
        an example keep the order they were written in). ``columns``,
        ``filters`` (pyarrow's: ``[("layer", "==", 3)]``) and ``example_ids`` narrow what is read; chunks
        holding none of ``example_ids`` are not opened. Every file is checked against its sha256 before it is
        parsed: a damaged one raises :class:`~attn_probe.store.CorruptChunkError`.
        """
        for table in self._iter_arrow(name, columns, filters, example_ids):
            yield self._to_frame(table, columns)

    def table(
        self,
        name: str,
        columns: Sequence[str] | None = None,
        filters: Any = None,
        example_ids: Sequence[int] | set[int] | None = None,
    ) -> pd.DataFrame:
        """Table ``name`` as one DataFrame sorted by ``example_id`` (see :meth:`iter_table` for the options).

        Chunks are combined by pyarrow, so a column that is all-null in one chunk takes the type of the others.
        """
        pieces = list(self._iter_arrow(name, columns, filters, example_ids))
        if not pieces:  # no chunk holds the wanted examples: an empty table with the right columns and types
            pieces = [next(self._iter_arrow(name, columns, filters, None)).slice(0, 0)]
        return self._to_frame(pa.concat_tables(pieces, promote_options="default"), columns)

    @staticmethod
    def _to_frame(table: pa.Table, columns: Sequence[str] | None) -> pd.DataFrame:
        frame = _sorted_by_example(table.to_pandas())
        if columns is not None and EXAMPLE_ID not in columns:  # read only to sort by
            frame = frame.drop(columns=EXAMPLE_ID)
        return frame

    def sample(self, name: str, example_id: int) -> np.ndarray:
        """The stored float16 array ``name`` of ``example_id`` (checked against its sha256 before it is read)."""
        example_id = _as_id(example_id)
        for chunk in self._chunks.values():
            stored = chunk.samples.get(name, {}).get(example_id)
            if stored is not None:
                return _chunks.npy_to_array(_chunks.read_file(self._root, stored, self._redo_hint(chunk)))
        available = self.samples(name)
        raise StoreError(
            f"run {self._root} has no sample {name!r} for example {example_id} "
            f"(stored for {len(available)} examples: {available[:5]}{' ...' if len(available) > 5 else ''})"
        )

    def verify(self) -> list[str]:
        """Every problem among the committed files (missing, wrong size, sha256 mismatch); empty if sound."""
        problems = []
        for chunk in self._ordered_chunks():
            for stored in chunk.files():
                problem = _chunks.file_problem(self._root, stored)
                if problem:
                    problems.append(f"chunk {chunk.stem}: {problem}")
        return problems

    # -------------------------------------------------------------------------------------- internals
    def _ordered_chunks(self) -> list[Chunk]:
        return sorted(self._chunks.values(), key=lambda chunk: (chunk.first_id, chunk.number))

    def _iter_arrow(
        self, name: str, columns: Sequence[str] | None, filters: Any, example_ids: Any
    ) -> Iterator[pa.Table]:
        names = self.tables()
        if name not in names:
            raise StoreError(f"run {self._root} has no table {name!r}; its tables: {', '.join(names) or 'none yet'}")
        wanted = None if example_ids is None else {_as_id(example_id) for example_id in example_ids}
        if wanted is not None:
            ids_filter = [(EXAMPLE_ID, "in", sorted(wanted))]
            filters = ids_filter if filters is None else _and_filters(filters, ids_filter)
        if columns is not None and EXAMPLE_ID not in columns:
            columns = [EXAMPLE_ID, *columns]
        for chunk in self._ordered_chunks():
            stored = chunk.tables.get(name)
            if stored is None or (wanted is not None and wanted.isdisjoint(chunk.example_ids)):
                continue
            data = _chunks.read_file(self._root, stored, self._redo_hint(chunk))
            yield _chunks.parquet_to_arrow(data, columns, filters)

    def _redo_hint(self, chunk: Chunk) -> str:
        ids = sorted(chunk.example_ids)
        shown = f"{ids[:5]}{' ...' if len(ids) > 5 else ''}"
        return f"open the run with Run.open (same identity) to redo its examples {shown}"

    def _writable(self) -> None:
        if self._lock is None:
            raise ReadOnlyRunError(
                f"run {self._root} is open read-only (load_run) or closed: use Run.open to write to it"
            )

    def _save_manifest(self) -> None:
        self._manifest["updated"] = now()
        self._manifest["elapsed_s"] = round(self._elapsed_before + time.monotonic() - self._session_start, 3)
        self._manifest["counts"] = self.counts()
        atomic_write_json(self._root / MANIFEST, self._manifest)


def load_run(path: str | os.PathLike[str], *, verify: bool = True) -> Run:
    """Open the run at ``path`` read-only (it may be still running elsewhere): nothing on disk is changed.

    Raises :class:`NotARunError` saying what is missing. ``verify``: check every committed file's sha256 now
    (False: sizes only; reading checks the sha256 anyway). A damaged chunk is left out with a
    :class:`StoreWarning`, so its examples are not in :meth:`Run.done` and never read.
    """
    return Run.load(path, verify=verify)


# ------------------------------------------------------------------------------------------- helpers
def _as_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise StoreError(f"example id {value!r} is a {type(value).__name__}: example ids are integers")
    return int(value)


def _and_filters(filters: Any, extra: list[tuple[str, str, Any]]) -> Any:
    if filters and isinstance(filters[0], list):  # disjunctive normal form: add to every conjunction
        return [[*conjunction, *extra] for conjunction in filters]
    return [*filters, *extra]


def _read_manifest(root: Path) -> dict[str, Any]:
    payload = read_json(root / MANIFEST)
    problem = check_manifest(payload, f"{root / MANIFEST}")
    if problem:
        raise NotARunError(f"{problem}: restore it, or choose another directory")
    assert payload is not None
    return payload


def _refuse_strangers(root: Path) -> None:
    """A NotARunError if ``root`` has no manifest but holds something other than our lock and temporary files."""
    if not root.is_dir() or (root / MANIFEST).exists():
        return
    strangers = sorted(entry.name for entry in root.iterdir() if entry.name != LOCK and not entry.name.endswith(".tmp"))
    if strangers:
        raise NotARunError(
            f"{root} is not empty and has no {MANIFEST} (found {', '.join(strangers[:5])}): "
            "choose a new or empty directory"
        )


def _note_versions(root: Path, manifest: dict[str, Any]) -> None:
    current = package_versions()
    changes = manifest.get("version_changes") or []
    last = changes[-1]["versions"] if changes else manifest.get("versions") or {}
    changed = {name: (last.get(name), version) for name, version in current.items() if last.get(name) != version}
    if changed:
        text = ", ".join(f"{name} {old} → {new}" for name, (old, new) in changed.items())
        warnings.warn(f"run {root} resumes with other package versions ({text})", StoreWarning, stacklevel=3)
        manifest.setdefault("version_changes", []).append({"at": now(), "versions": current})


def _load_chunks(root: Path, *, full: bool, repair: bool) -> dict[int, Chunk]:
    """The sound committed chunks. ``repair`` (a writer holding the lock): also delete damaged chunks and
    leftovers of interrupted writes. Every damaged chunk is named in a :class:`StoreWarning`."""
    chunks: dict[int, Chunk] = {}
    damaged: list[tuple[str, str, Any]] = []
    folder = root / CHUNKS
    record_files = sorted(folder.iterdir()) if folder.is_dir() else []
    for record in record_files:
        number = _chunks.record_number(record.name)
        if number is None:
            continue
        try:
            chunk = _chunks.read_chunk_record(root, number)
        except ValueError as error:
            damaged.append((record.name, f"its commit record is damaged ({error})", None))
            continue
        problem = _chunks.chunk_problem(root, chunk, full)
        if problem:
            damaged.append((record.name, problem, chunk))
            continue
        chunks[number] = chunk
    for record_name, problem, chunk in damaged:
        ids = "unknown examples" if chunk is None else f"examples {sorted(chunk.example_ids)[:5]}"
        action = "it is dropped and its examples will be redone" if repair else "it is left out (not read)"
        warnings.warn(
            f"run {root}: chunk {record_name} is damaged: {problem}; {action} ({ids})", StoreWarning, stacklevel=3
        )
        if repair:  # the record goes first: from then on the chunk is not committed, whatever happens next
            (folder / record_name).unlink(missing_ok=True)
    if repair:
        referenced = {stored.path for chunk in chunks.values() for stored in chunk.files()}
        records = {f"{chunk.stem}.json" for chunk in chunks.values()}
        for path in _chunks.leftovers(root, referenced, records):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return chunks


def _acquire_lock(root: Path) -> Any:
    handle = open(root / LOCK, "a+")  # noqa: SIM115 - held for the life of the Run
    if fcntl is None:  # pragma: no cover
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunBusyError(
            f"run {root} is being written by {holder}: wait for it to finish, or choose another directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def _release_lock(handle: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
