"""Chunks: the unit a run commits. One chunk = the Parquet files and samples of some examples + a record.

Writing a chunk (:func:`write_chunk`):

1. every table frame is serialised to Parquet in memory, its sha256 taken, and the bytes written atomically
   to ``tables/<table>/<chunk>.parquet`` (temporary file beside it, flush + fsync, rename, fsync the folder);
2. every sample array is cast to float16 and written the same way to ``samples/<name>/<example_id>.npy``;
3. last, the commit record ``chunks/<chunk>.json`` is written the same way. It lists the example ids and,
   per file, its path, rows / shape, size and sha256, and carries a checksum of its own content.

Only a chunk with a valid record exists. A process killed at any moment leaves either a committed chunk or
files that no record names (and temporary files), which the next writer removes (only names this module
writes: a file put there by someone else is left alone). A write that fails (a full disk, a read-only one)
removes the files of its chunk before it raises. A committed file that no longer matches its record is never
read: :func:`chunk_problem` finds it and :func:`read_file` refuses it. A file that exists but cannot be read
(permissions) is not damage: an OSError, never a reason to drop the chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from attn_probe.store.errors import CorruptChunkError, StoreError, access_error

RECORD_FORMAT = "attn_probe.chunk"
CHUNKS, TABLES, SAMPLES = "chunks", "tables", "samples"
EXAMPLE_ID = "example_id"
SAMPLE_DTYPE = np.float16
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_RECORD_NAME = re.compile(r"^(\d+)\.json$")
# The names this module writes in each folder (and their temporary files): only these are ever removed.
_OURS = {
    CHUNKS: re.compile(r"^\.?\d{6,}\.json(\..+\.tmp)?$"),
    TABLES: re.compile(r"^\.?\d{6,}\.parquet(\..+\.tmp)?$"),
    SAMPLES: re.compile(r"^\.?-?\d+\.npy(\..+\.tmp)?$"),
}


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # mkstemp makes owner-only files; a run's files get the usual mode


def check_name(name: Any, what: str) -> str:
    """``name`` if it can name a table or sample folder (letters, digits, ``_ . -``), else a StoreError."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".tmp"):
        raise StoreError(f"{what} name {name!r} is not usable: use letters, digits, '_', '.', '-' (max 100)")
    return name


def chunk_stem(number: int) -> str:
    return f"{number:06d}"


def record_number(file_name: str) -> int | None:
    """The chunk number of a commit record's file name (``000007.json`` → 7), or None."""
    match = _RECORD_NAME.match(file_name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class StoredFile:
    """One committed file: its path relative to the run, size, sha256 and rows (a table) or shape (a sample)."""

    path: str
    bytes: int
    sha256: str
    rows: int | None = None
    shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"path": self.path, "bytes": self.bytes, "sha256": self.sha256}
        if self.rows is not None:
            payload["rows"] = self.rows
        if self.shape is not None:
            payload["shape"] = list(self.shape)
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> StoredFile:
        shape = payload.get("shape")
        return cls(
            path=str(payload["path"]),
            bytes=int(payload["bytes"]),
            sha256=str(payload["sha256"]),
            rows=None if payload.get("rows") is None else int(payload["rows"]),
            shape=None if shape is None else tuple(int(size) for size in shape),
        )


@dataclass(frozen=True)
class Chunk:
    """A committed chunk: its number, example ids, table files and sample files."""

    number: int
    example_ids: tuple[int, ...]
    tables: dict[str, StoredFile] = field(default_factory=dict)
    samples: dict[str, dict[int, StoredFile]] = field(default_factory=dict)
    written: str = ""

    @property
    def stem(self) -> str:
        return chunk_stem(self.number)

    @property
    def first_id(self) -> int:
        return min(self.example_ids) if self.example_ids else 0

    def files(self) -> list[StoredFile]:
        return [*self.tables.values(), *(f for by_id in self.samples.values() for f in by_id.values())]

    def to_record(self) -> dict[str, Any]:
        body = {
            "format": RECORD_FORMAT,
            "chunk": self.number,
            "written": self.written,
            "example_ids": list(self.example_ids),
            "tables": {name: stored.to_json() for name, stored in self.tables.items()},
            "samples": {
                name: {str(example_id): stored.to_json() for example_id, stored in by_id.items()}
                for name, by_id in self.samples.items()
            },
        }
        return {**body, "checksum": _record_checksum(body)}

    @classmethod
    def from_record(cls, payload: Any, number: int) -> Chunk:
        """The chunk a record describes; ValueError if the record is damaged or not for chunk ``number``."""
        if not isinstance(payload, dict) or payload.get("format") != RECORD_FORMAT:
            raise ValueError("not a commit record")
        body = {key: value for key, value in payload.items() if key != "checksum"}
        if payload.get("checksum") != _record_checksum(body):
            raise ValueError("its checksum does not match its content")
        if payload.get("chunk") != number:
            raise ValueError(f"it describes chunk {payload.get('chunk')!r}")
        try:
            return cls(
                number=number,
                example_ids=tuple(int(example_id) for example_id in payload["example_ids"]),
                tables={name: StoredFile.from_json(stored) for name, stored in payload["tables"].items()},
                samples={
                    name: {int(example_id): StoredFile.from_json(stored) for example_id, stored in by_id.items()}
                    for name, by_id in payload["samples"].items()
                },
                written=str(payload.get("written", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"it is incomplete ({error!r})") from error


def _record_checksum(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        handle = os.open(path, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) durably: each new folder's parent is fsynced, so that a file renamed
    into it and fsynced cannot vanish with its folder on a power loss."""
    if folder.is_dir():
        return
    missing = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(created.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, durably.

    A temporary file beside ``path`` (``.<name>.<random>.tmp``) is written, flushed and fsynced, renamed onto
    ``path``, and the folder fsynced. The same scheme as ``attn_probe.models.cache``, which is not imported
    because ``attn_probe.models`` loads torch and transformers, and reading a run needs neither. A failure
    (a full disk, no permission) leaves no temporary file and raises an OSError whose ``filename`` is ``path``.
    """
    make_folder(path.parent)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except OSError as error:  # name the file being written, not its temporary
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    fsync_directory(path.parent)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=1, default=str) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing, not JSON or not an object.

    A file that is there but cannot be read (permissions, an I/O error) raises its OSError: that is not
    damage, and must never be taken for it.
    """
    try:
        payload = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def write_durable(root: Path, relative: str, data: bytes) -> StoredFile:
    """Write ``data`` atomically and durably to ``root/relative``; the :class:`StoredFile` that describes it."""
    atomic_write_bytes(root / relative, data)
    return StoredFile(path=relative, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def frame_to_arrow(frame: pd.DataFrame, name: str = "") -> pa.Table:
    """``frame`` (index dropped) as an Arrow table; a :class:`StoreError` if a column has mixed types."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise StoreError(f"table {name!r} cannot be stored as Parquet ({reason}): give each column one type") from None


def arrow_to_parquet(table: pa.Table) -> bytes:
    """``table`` as the bytes of a zstd-compressed Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def frame_to_parquet(frame: pd.DataFrame, name: str = "") -> bytes:
    """``frame`` (index dropped) as the bytes of a zstd-compressed Parquet file."""
    return arrow_to_parquet(frame_to_arrow(frame, name))


def array_to_npy(array: Any, where: str) -> tuple[bytes, tuple[int, ...]]:
    """``array`` (numpy or torch) cast to float16, as ``.npy`` bytes, and its shape."""
    if hasattr(array, "detach"):  # a torch tensor: never import torch here
        array = array.detach().to("cpu").float().numpy()
    source = np.asarray(array)
    if not (np.issubdtype(source.dtype, np.floating) or np.issubdtype(source.dtype, np.integer)):
        raise StoreError(f"{where} has dtype {source.dtype}: samples are numeric arrays, stored in float16")
    with np.errstate(over="ignore"):  # an overflow is reported below, with what to do
        converted = source.astype(SAMPLE_DTYPE)
    if np.isinf(converted).any() and not np.isinf(source).any():
        raise StoreError(f"{where} has values beyond float16's range (±65504): samples are stored in float16")
    buffer = io.BytesIO()
    np.save(buffer, converted, allow_pickle=False)
    return buffer.getvalue(), tuple(converted.shape)


def check_frame(name: str, frame: Any, example_ids: set[int]) -> pd.DataFrame:
    """``frame`` if it can be stored for these examples: a DataFrame with an integer ``example_id`` column."""
    if not isinstance(frame, pd.DataFrame):
        raise StoreError(f"table {name!r} is a {type(frame).__name__}: give a pandas DataFrame")
    if EXAMPLE_ID not in frame.columns:
        raise StoreError(f"table {name!r} has no {EXAMPLE_ID!r} column: every stored row belongs to an example")
    column = frame[EXAMPLE_ID]
    if not pd.api.types.is_integer_dtype(column.dtype) or column.isna().any():
        raise StoreError(f"table {name!r}: {EXAMPLE_ID!r} must be integers without missing values")
    foreign = set(column.unique().tolist()) - example_ids
    if foreign:
        shown = sorted(foreign)[:5]
        raise StoreError(f"table {name!r} has rows for examples {shown} that are not among this chunk's example ids")
    if not all(isinstance(column_name, str) for column_name in frame.columns):
        raise StoreError(f"table {name!r} has column names that are not strings")
    return frame


def write_chunk(
    root: Path,
    number: int,
    example_ids: Sequence[int],
    tables: Mapping[str, pd.DataFrame],
    samples: Mapping[str, Mapping[int, Any]],
    written: str,
    check_schema: Callable[[str, pa.Schema], None] | None = None,
) -> Chunk:
    """Write one chunk's files, then its commit record last (see the module docstring); the committed chunk.

    Everything is serialised (and each table's schema given to ``check_schema``) before the first file is
    written, so a frame or array that cannot be stored raises with nothing on disk. A write that fails (an
    OSError: a full disk ...) removes the files it wrote before it raises: the chunk is not committed.
    """
    stem = chunk_stem(number)
    arrow_tables = {name: frame_to_arrow(frame, name) for name, frame in tables.items()}
    if check_schema is not None:
        for name, table in arrow_tables.items():
            check_schema(name, table.schema)
    table_bytes = {name: (arrow_to_parquet(table), table.num_rows) for name, table in arrow_tables.items()}
    sample_bytes = {
        name: {
            example_id: array_to_npy(array, f"sample {name!r} of example {example_id}")
            for example_id, array in by_id.items()
        }
        for name, by_id in samples.items()
    }
    record = root / CHUNKS / f"{stem}.json"
    written_paths: list[Path] = []
    try:
        stored_tables: dict[str, StoredFile] = {}
        for name, (data, rows) in table_bytes.items():
            written_paths.append(root / TABLES / name / f"{stem}.parquet")
            stored = write_durable(root, f"{TABLES}/{name}/{stem}.parquet", data)
            stored_tables[name] = StoredFile(stored.path, stored.bytes, stored.sha256, rows=rows)
        stored_samples: dict[str, dict[int, StoredFile]] = {}
        for name, by_id in sample_bytes.items():
            stored_samples[name] = {}
            for example_id, (data, shape) in by_id.items():
                written_paths.append(root / SAMPLES / name / f"{example_id}.npy")
                stored = write_durable(root, f"{SAMPLES}/{name}/{example_id}.npy", data)
                stored_samples[name][example_id] = StoredFile(stored.path, stored.bytes, stored.sha256, shape=shape)
        chunk = Chunk(number, tuple(example_ids), stored_tables, stored_samples, written)
        atomic_write_json(record, chunk.to_record())
    except BaseException:
        # Not committed: its files go, so a full disk gets its space back and no reader of the folders (a
        # pyarrow dataset over tables/<name>/) meets rows that no record names. The files are those of ids
        # not committed, so none belongs to another chunk; and if the record made it after all, keep them.
        if not record.exists():
            for path in written_paths:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    return chunk


def read_chunk_record(root: Path, number: int) -> Chunk:
    """The committed chunk ``number``; ValueError (with the reason) if its record is unreadable or damaged."""
    payload = read_json(root / CHUNKS / f"{chunk_stem(number)}.json")
    if payload is None:
        raise ValueError("its record is not a JSON object (cut short or overwritten)")
    return Chunk.from_record(payload, number)


def file_problem(root: Path, stored: StoredFile, full: bool = True) -> str | None:
    """Why a committed file is damaged (missing, wrong size, sha256 mismatch), or None if it is sound.

    A file that cannot be read (permissions, an I/O error) raises its OSError: that is not damage.
    """
    path = root / stored.path
    try:
        size = path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return f"{stored.path} is missing"
    if size != stored.bytes:
        return f"{stored.path} has {size} bytes, {stored.bytes} were committed"
    if full:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != stored.sha256:
            return f"{stored.path} does not match its sha256"
    return None


def chunk_problem(root: Path, chunk: Chunk, full: bool = True) -> str | None:
    """The first problem among a committed chunk's files, or None."""
    for stored in chunk.files():
        problem = file_problem(root, stored, full)
        if problem:
            return problem
    return None


def read_file(root: Path, stored: StoredFile, redo_hint: str) -> bytes:
    """The bytes of a committed file, checked against its sha256; :class:`CorruptChunkError` otherwise
    (:class:`~attn_probe.store.RunAccessError` if it is there but cannot be read)."""
    try:
        data = (root / stored.path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        problem = "is missing"
    except OSError as error:
        raise access_error(error, root, writing=False, kept="nothing in the run was changed") from error
    else:
        if len(data) == stored.bytes and hashlib.sha256(data).hexdigest() == stored.sha256:
            return data
        problem = "does not match its sha256"
    raise CorruptChunkError(f"{stored.path} of run {root} {problem}: not read; {redo_hint}")


def parquet_to_arrow(data: bytes, columns: Sequence[str] | None, filters: Any) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), columns=list(columns) if columns is not None else None, filters=filters)


def npy_to_array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def leftovers(root: Path, referenced: Iterable[str], records: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """``(leftovers, foreign)``: files under ``tables/``, ``samples/`` and ``chunks/`` that no valid commit
    record accounts for, split into those this module writes (leftovers of interrupted writes, to remove) and
    the others (put there by someone else: never removed).

    ``referenced``: paths (relative, posix) of committed files; ``records``: names of valid record files.
    Temporary files of interrupted writes are leftovers too. The manifest's temporary files are included.
    """
    referenced = set(referenced)
    records = set(records)
    found = [path for path in root.glob(".manifest.json.*.tmp") if path.is_file()]
    foreign: list[Path] = []
    for folder, depth in ((TABLES, 2), (SAMPLES, 2), (CHUNKS, 1)):
        base = root / folder
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            relative = path.relative_to(root).as_posix()
            if not path.is_file() or relative in referenced or (folder == CHUNKS and path.name in records):
                continue
            ours = len(path.relative_to(base).parts) == depth and _OURS[folder].match(path.name)
            (found if ours else foreign).append(path)
    return sorted(found), sorted(foreign)
