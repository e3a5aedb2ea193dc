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

What is never done: a directory that is not a run of ours (other files, a damaged or foreign manifest) is
refused before anything is written in it, not even the lock; a file that cannot be read (permissions) is an
error (:class:`RunAccessError`), never taken for damage and dropped; files under ``tables/``, ``samples/`` and
``chunks/`` whose names attn_probe does not write are left alone (with a :class:`StoreWarning`). A write that
fails (a full disk: :class:`DiskFullError`; a read-only one) raises a one-line error naming the file, leaves
no file of the failed chunk, and keeps every chunk committed before it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attn_probe.store import chunks as _chunks
from attn_probe.store.chunks import CHUNKS, EXAMPLE_ID, Chunk, StoredFile, atomic_write_json
from attn_probe.store.errors import (
    CorruptChunkError,
    DuplicateExampleError,
    NotARunError,
    ReadOnlyRunError,
    RunBusyError,
    RunMismatchError,
    StoreError,
    StoreWarning,
    TableSchemaError,
    access_error,
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
_OUR_LOCK = re.compile(r"^(process \d+)?\s*$")  # what _acquire_lock writes in the lock file
_ARROW_ERRORS = (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OSError)


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
        self._schemas: dict[str, pa.Schema | None] = {}  # per table: the schema its chunks unify to (writers)

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
        try:
            if root.exists() and not root.is_dir():
                raise NotARunError(f"{root} is a file, not a run directory: choose a directory")
            # Checked before anything is written, the lock file included: a directory that is not a run of ours
            # (another tool's files, a damaged or foreign manifest) is left exactly as it was.
            if (root / MANIFEST).exists():
                _read_manifest(root)
            else:
                _refuse_strangers(root)
        except OSError as error:  # a folder on the way that cannot be searched or listed
            raise access_error(error, root, writing=False, kept="nothing was written") from error
        try:
            _chunks.make_folder(root)
        except OSError as error:
            raise access_error(error, root, writing=True, kept="nothing was written") from error
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
            try:
                run._save_manifest()
                for folder in (_chunks.CHUNKS, _chunks.TABLES, _chunks.SAMPLES):
                    _chunks.make_folder(root / folder)
            except OSError as error:
                raise access_error(error, root, writing=True, kept=run._kept()) from error
            return run
        except BaseException:
            _release_lock(lock)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Run:
        """A read-only run; see :func:`load_run`."""
        root = Path(path)
        try:
            if not root.is_dir():
                what = "is a file" if root.exists() else "does not exist"
                raise NotARunError(f"no run at {root}: the directory {what}")
        except OSError as error:
            raise access_error(error, root, writing=False, kept="nothing was changed") from error
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
        schemas: dict[str, pa.Schema] = {}
        try:
            check = functools.partial(self._check_schema, accepted=schemas)
            chunk = _chunks.write_chunk(self._root, number, ids, frames, arrays, now(), check_schema=check)
        except OSError as error:  # the chunk's files are gone: nothing of it is committed
            raise access_error(error, self._root, writing=True, kept=self._kept()) from error
        self._schemas.update(schemas)
        self._next = number + 1
        self._chunks[number] = chunk
        self._done.update(ids)
        if self._manifest.get("status") == "complete":
            self._manifest["status"] = "running"
            self._manifest["finished"] = None
        try:  # the chunk is committed (its record is the truth); the manifest's counts are a convenience
            self._save_manifest()
        except OSError as error:
            raise access_error(error, self._root, writing=True, kept=self._kept()) from error
        return number

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Mark the run complete: status, counts, elapsed seconds, ``extra`` (JSON data) merged in. The manifest."""
        self._writable()
        self._manifest["status"] = "complete"
        self._manifest["finished"] = now()
        if extra:
            self._manifest.setdefault("extra", {}).update(normalize(dict(extra), "extra"))
        try:
            self._save_manifest()
        except OSError as error:
            raise access_error(error, self._root, writing=True, kept=self._kept()) from error
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
        for _, table in self._iter_arrow(name, columns, filters, example_ids):
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
            chunk, table = next(self._iter_arrow(name, columns, filters, None))
            pieces = [(chunk, table.slice(0, 0))]
        try:
            combined = pa.concat_tables([table for _, table in pieces], promote_options="default")
        except _ARROW_ERRORS as error:
            raise self._conflict(name, pieces, error) from None
        return self._to_frame(combined, columns)

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
                data = _chunks.read_file(self._root, stored, self._redo_hint(chunk))
                try:
                    return _chunks.npy_to_array(data)
                except (ValueError, OSError, EOFError) as error:
                    reason = " ".join(str(error).split())
                    raise CorruptChunkError(
                        f"{stored.path} of run {self._root} is not a readable array ({reason}): "
                        f"{self._redo_hint(chunk)}"
                    ) from None
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
                try:
                    problem = _chunks.file_problem(self._root, stored)
                except OSError as error:
                    problem = f"{stored.path} cannot be read ({' '.join(str(error.strerror or error).split())})"
                if problem:
                    problems.append(f"chunk {chunk.stem}: {problem}")
        return problems

    # -------------------------------------------------------------------------------------- internals
    def _ordered_chunks(self) -> list[Chunk]:
        return sorted(self._chunks.values(), key=lambda chunk: (chunk.first_id, chunk.number))

    def _iter_arrow(
        self, name: str, columns: Sequence[str] | None, filters: Any, example_ids: Any
    ) -> Iterator[tuple[Chunk, pa.Table]]:
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
            try:
                table = _chunks.parquet_to_arrow(data, columns, filters)
            except _ARROW_ERRORS as error:
                raise self._unreadable(name, chunk, stored, data, columns, error) from None
            yield chunk, table

    def _redo_hint(self, chunk: Chunk) -> str:
        return f"open the run with Run.open (same identity) to redo its examples {self._ids_text(chunk)}"

    def _drop_hint(self, chunk: Chunk) -> str:
        return (
            f"delete {CHUNKS}/{chunk.stem}.json and run again (Run.open with the same identity, or the same "
            f"command) to redo its examples {self._ids_text(chunk)}"
        )

    @staticmethod
    def _ids_text(chunk: Chunk) -> str:
        ids = sorted(chunk.example_ids)
        return f"{ids[:5]}{' ...' if len(ids) > 5 else ''}"

    def _unreadable(
        self, name: str, chunk: Chunk, stored: StoredFile, data: bytes, columns: Any, error: Exception
    ) -> StoreError:
        """The error for a committed file (its sha256 matches) that pyarrow cannot read as table ``name``."""
        try:
            schema = pq.read_schema(pa.BufferReader(data))
        except _ARROW_ERRORS:
            reason = " ".join(str(error).split())[:200]
            return CorruptChunkError(
                f"{stored.path} of run {self._root} (chunk {chunk.stem}) is not a readable Parquet file ({reason}): "
                f"{self._drop_hint(chunk)}"
            )
        missing = [column for column in columns or () if column not in schema.names]
        if missing and not any(column in self._column_names(name) for column in missing):  # a typo, no damage
            known = ", ".join(sorted(self._column_names(name)))
            return StoreError(
                f"table {name!r} of run {self._root} has no column {', '.join(map(repr, missing))}; "
                f"its columns: {known}"
            )
        if missing:
            return TableSchemaError(
                f"table {name!r} of run {self._root} has no column {', '.join(map(repr, missing))} in {stored.path} "
                f"(its columns: {', '.join(schema.names)}), other chunks have it: {self._drop_hint(chunk)}"
            )
        reason = " ".join(str(error).split())[:200]
        return TableSchemaError(
            f"{stored.path} of run {self._root} cannot be read as table {name!r} ({reason}): {self._drop_hint(chunk)}"
        )

    def _column_names(self, name: str) -> set[str]:
        """Every column of table ``name`` in any committed chunk (read from the files' footers)."""
        names: set[str] = set()
        for chunk in self._chunks.values():
            if name in chunk.tables:
                with contextlib.suppress(*_ARROW_ERRORS):
                    names.update(pq.read_schema(self._root / chunk.tables[name].path).names)
        return names

    def _conflict(self, name: str, pieces: list[tuple[Chunk, pa.Table]], error: Exception) -> TableSchemaError:
        """The error for table ``name`` whose chunks do not combine: the first chunk that clashes, and how."""
        unified = pieces[0][1].schema.remove_metadata()
        for chunk, table in pieces[1:]:
            schema = table.schema.remove_metadata()
            try:
                unified = pa.unify_schemas([unified, schema], promote_options="default")
            except _ARROW_ERRORS:
                return TableSchemaError(
                    f"table {name!r} of run {self._root} cannot be read as one table: {chunk.tables[name].path} "
                    f"has {_schema_difference(unified, schema)} (written by another version?); read it chunk by chunk "
                    f"with iter_table({name!r}), or {self._drop_hint(chunk)}"
                )
        reason = " ".join(str(error).split())[:200]
        return TableSchemaError(f"table {name!r} of run {self._root} cannot be read as one table ({reason})")

    def _check_schema(self, name: str, schema: pa.Schema, accepted: dict[str, pa.Schema]) -> None:
        """Refuse a chunk whose table ``name`` cannot be combined with the chunks already committed (it would
        make :meth:`table` fail); ``accepted``: the unified schemas, kept once the chunk is committed."""
        schema = schema.remove_metadata()
        if name not in self._schemas:
            self._schemas[name] = self._committed_schema(name)
        known = self._schemas[name]
        if known is None:
            accepted[name] = schema
            return
        try:
            accepted[name] = pa.unify_schemas([known, schema], promote_options="default")
        except _ARROW_ERRORS:
            raise TableSchemaError(
                f"table {name!r} cannot be written to run {self._root}: this chunk has "
                f"{_schema_difference(known, schema)}; "
                "give each column the same type in every write (nothing of this chunk was written)"
            ) from None

    def _committed_schema(self, name: str) -> pa.Schema | None:
        """The schema of table ``name`` in its latest committed chunk (read from the file's footer), or None."""
        latest = max(
            (chunk for chunk in self._chunks.values() if name in chunk.tables), key=lambda c: c.number, default=None
        )
        if latest is None:
            return None
        try:
            return pq.read_schema(self._root / latest.tables[name].path).remove_metadata()
        except _ARROW_ERRORS:  # unreadable now: reading it will say so; the check is a courtesy
            return None

    def _kept(self) -> str:
        if not self._done:
            return "nothing was committed to it yet"
        return f"the {len(self._done)} examples committed so far are kept"

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


def _schema_difference(before: pa.Schema, after: pa.Schema) -> str:
    """How ``after`` clashes with ``before``: ``"column 'x' as string, not int64 as in the chunks before it"``."""
    for field in after:
        if before.get_field_index(field.name) < 0:
            continue
        old = before.field(field.name).type
        if old != field.type and not pa.types.is_null(old) and not pa.types.is_null(field.type):
            return f"column {field.name!r} as {field.type}, not {old} as in the chunks before it"
    return f"columns ({after.to_string(show_schema_metadata=False)}) that do not match the chunks before it".replace(
        "\n", ", "
    )


def _read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of ``root``; NotARunError (missing, not JSON, not ours) or RunAccessError (unreadable)."""
    path = root / MANIFEST
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise NotARunError(f"{root} is not an attn_probe run: {MANIFEST} is missing") from None
    except IsADirectoryError:
        raise NotARunError(f"{root} is not an attn_probe run: {MANIFEST} is a directory") from None
    except OSError as error:
        raise access_error(error, root, writing=False, kept="nothing was changed") from error
    try:
        payload = json.loads(data)
    except ValueError:
        raise NotARunError(
            f"{path} is not valid JSON (damaged, or not written by attn_probe): restore it from a backup, or "
            f"choose another directory; nothing in {root} was changed"
        ) from None
    problem = check_manifest(payload, f"{path}")
    if problem:
        raise NotARunError(f"{problem}; nothing in {root} was changed")
    return payload


def _ours_without_manifest(entry: Path) -> bool:
    """Whether ``entry`` is what a first Run.open killed before its manifest leaves: our lock, a manifest's
    temporary file."""
    if entry.name.startswith(f".{MANIFEST}.") and entry.name.endswith(".tmp"):
        return True
    if entry.name != LOCK or not entry.is_file():
        return False
    try:
        return _OUR_LOCK.match(entry.read_text(errors="replace")[:100]) is not None
    except OSError:
        return False


def _refuse_strangers(root: Path) -> None:
    """A NotARunError if ``root`` has no manifest but holds something other than our lock and temporary files."""
    if not root.is_dir() or (root / MANIFEST).exists():
        return
    try:
        entries = list(root.iterdir())
    except OSError as error:
        raise access_error(error, root, writing=False, kept="nothing was written") from error
    strangers = sorted(entry.name for entry in entries if not _ours_without_manifest(entry))
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
    leftovers of interrupted writes. Every damaged chunk is named in a :class:`StoreWarning`.

    A record or file that is there but cannot be read (permissions, an I/O error) is not damage: it raises
    :class:`RunAccessError` and nothing is deleted.
    """
    try:
        chunks, damaged = _scan_chunks(root, full=full)
    except OSError as error:
        raise access_error(error, root, writing=False, kept="nothing was changed") from error
    try:
        _report_and_repair(root, chunks, damaged, repair=repair)
    except OSError as error:
        raise access_error(error, root, writing=True, kept="nothing was lost") from error
    return chunks


def _scan_chunks(root: Path, *, full: bool) -> tuple[dict[int, Chunk], list[tuple[str, str, Chunk | None]]]:
    """``(sound chunks, damaged)``: each damaged record's file name, its problem and its chunk (None: the
    record itself is damaged)."""
    chunks: dict[int, Chunk] = {}
    damaged: list[tuple[str, str, Chunk | None]] = []
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
    return chunks, damaged


def _report_and_repair(
    root: Path, chunks: dict[int, Chunk], damaged: list[tuple[str, str, Chunk | None]], *, repair: bool
) -> None:
    """Warn about every damaged chunk; ``repair``: delete them and the leftovers of interrupted writes, and
    warn about files that are not ours (left alone)."""
    folder = root / CHUNKS
    for record_name, problem, chunk in damaged:
        ids = "unknown examples" if chunk is None else f"examples {sorted(chunk.example_ids)[:5]}"
        if repair:
            action = "it is dropped and its examples will be redone"
        else:
            action = "it is left out (not read); Run.open (same identity) or the same command redoes them"
        warnings.warn(
            f"run {root}: chunk {record_name} is damaged: {problem}; {action} ({ids})", StoreWarning, stacklevel=5
        )
        if repair:  # the record goes first: from then on the chunk is not committed, whatever happens next
            (folder / record_name).unlink(missing_ok=True)
    if repair:
        referenced = {stored.path for chunk in chunks.values() for stored in chunk.files()}
        records = {f"{chunk.stem}.json" for chunk in chunks.values()}
        leftovers, foreign = _chunks.leftovers(root, referenced, records)
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if foreign:
            shown = ", ".join(path.relative_to(root).as_posix() for path in foreign[:5])
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            warnings.warn(
                f"run {root} holds files attn_probe did not write ({shown}{more}): left as they are, never read; "
                "move them out of the run directory",
                StoreWarning,
                stacklevel=5,
            )


def _acquire_lock(root: Path) -> Any:
    try:
        handle = open(root / LOCK, "a+")  # noqa: SIM115 - held for the life of the Run
    except OSError as error:
        kept = "nothing was changed" if (root / MANIFEST).exists() else "nothing was written"
        raise access_error(error, root, writing=True, kept=kept) from error
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
