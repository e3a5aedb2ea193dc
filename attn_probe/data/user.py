"""The user's own texts, from whatever they have at hand, checked before any model sees them.

Why: a probe run over a few hundred texts that fails at example 180 because a cell was empty, or quietly
explains ``"nan"``, wastes the user's time. :func:`load_texts` reads a CSV / TSV / JSONL / Parquet file, a
pandas DataFrame, a list of strings or a Hugging Face ``datasets.Dataset``, and refuses, with one line that
names the problem and what to do, anything a probe cannot use: a missing column, no rows, empty texts,
undecodable bytes, an unknown file type, labels with gaps.

    texts = load_texts("reviews.csv", text_column="review", label_column="stars", limit=200)
    texts.columns          # example_id, text, label
    batch = tokenize(tokenizer, texts.text.tolist())

``datasets`` is optional: it is never imported here, a Dataset is recognised by its interface
(``column_names`` and ``to_pandas``), so this module works, and is tested, without it.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

FILE_TYPES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# The strings pandas reads as missing by default; here they only count as missing in the label column, so a
# review that reads "NA" or "null" stays a text.
_MISSING_STRINGS = ["", "#N/A", "#NA", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "-NaN", "-nan"]
_SHOWN = 5  # row numbers listed in a message before "and N more"


def load_texts(
    source: str | os.PathLike[str] | pd.DataFrame | Sequence[str] | Any,
    *,
    text_column: str = "text",
    label_column: str | None = None,
    limit: int | None = None,
    encoding: str = "utf-8",
) -> pd.DataFrame:
    """Texts (and labels) from ``source`` as a table with columns ``example_id, text[, label]``.

    Args:
        source: a path to a ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson`` (one JSON object per line) or
            ``.parquet`` file; a pandas DataFrame; a list (or tuple, or Series) of strings; or a Hugging Face
            ``datasets.Dataset`` (one split: ``dataset_dict["train"]``).
        text_column: the column (key, field) holding the texts; not used for a list of strings.
        label_column: the column holding labels, copied as ``label`` (kept as they are: ints, strings ...);
            None: no labels.
        limit: keep only the first ``limit`` rows (checked after cutting, so a bad row further down does not
            stop a small run).
        encoding: of a text file (CSV, TSV, JSONL); a UTF-8 byte-order mark is skipped.

    Returns a new DataFrame: ``example_id`` (0, 1, ... in source order), ``text`` (str, unchanged: not
    stripped), and ``label`` when ``label_column`` is given. Rows are numbered from 0 in messages, in source
    order (the header line of a CSV does not count).

    Raises ValueError (one line: the problem and what to do) for: a missing column (naming the ones there
    are), an empty source, texts that are missing, empty or whitespace only (naming the rows), texts that are
    not strings, bytes that ``encoding`` cannot decode (naming the file and line), an unknown file type, and
    a label column with missing values (naming the rows).

        load_texts(["a gorgeous, witty movie", "dull"])        # example_id 0, 1
        load_texts(frame, text_column="sentence", label_column="label", limit=100)
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if label_column is not None and label_column == text_column:
        raise ValueError(f"label_column and text_column are both {text_column!r}: name two different columns")
    frame, name = _read(source, text_column, label_column, limit, encoding)
    if limit is not None:
        frame = frame.iloc[:limit]
    if len(frame) == 0:
        raise ValueError(f"{name} has no rows: there is nothing to probe")

    texts = frame[text_column]
    _check_texts(texts, name, text_column)
    out = pd.DataFrame({"example_id": range(len(frame)), "text": [str(t) for t in texts]})
    out["example_id"] = out["example_id"].astype("int64")
    if label_column is not None:
        labels = frame[label_column].reset_index(drop=True)
        missing = _rows(labels.isna().to_numpy())
        if missing:
            raise ValueError(
                f"{name}: the label column {label_column!r} has missing values in {_listed(missing, len(labels))}: "
                "drop or fill those rows, or pass label_column=None"
            )
        out["label"] = labels  # both indexes run 0..n-1; the dtype is kept (int64, str, Int64 ...)
    return out


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------
def _read(
    source: Any, text_column: str, label_column: str | None, limit: int | None, encoding: str
) -> tuple[pd.DataFrame, str]:
    """The source as a DataFrame with (at least) the wanted columns, and a name for messages."""
    wanted = [text_column] if label_column is None else [text_column, label_column]
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        frame = _read_file(path, text_column, label_column, encoding)
        name = f"file {str(path)!r}"
    elif isinstance(source, pd.DataFrame):
        frame, name = source, "the DataFrame"
    elif _is_dataset_dict(source):
        splits = ", ".join(repr(k) for k in source)
        raise ValueError(
            f"got a DatasetDict with the splits {splits}: pass one split, e.g. load_texts(dataset['train'], ...)"
        )
    elif _is_dataset(source):
        _require_columns(list(source.column_names), wanted, "the dataset", text_column)
        frame, name = _read_dataset(source, wanted, limit), "the dataset"
    elif isinstance(source, (list, tuple, pd.Series)):
        if label_column is not None:
            raise ValueError(
                "a list of strings has no labels: pass label_column=None, or a DataFrame with a label column"
            )
        frame, name = pd.DataFrame({text_column: list(source)}), "the list"
    else:
        raise TypeError(
            "source must be a file path (.csv, .tsv, .jsonl, .parquet), a pandas DataFrame, a list of strings or a "
            f"datasets.Dataset, got {type(source).__name__}"
        )
    _require_columns(list(frame.columns), wanted, name, text_column)
    return frame, name


def _require_columns(columns: list[Any], wanted: list[str], name: str, text_column: str) -> None:
    for column in wanted:
        if column not in columns:
            role = "text_column" if column == text_column else "label_column"
            there = ", ".join(repr(str(c)) for c in columns) or "(none)"
            raise ValueError(f"{name} has no column {column!r}; its columns are: {there}. Pass {role}= one of them")


def _read_file(path: Path, text_column: str, label_column: str | None, encoding: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        kinds = ", ".join(FILE_TYPES)
        raise ValueError(
            f"cannot read {str(path)!r}: unknown file type {suffix or '(no extension)'!r}; load_texts reads {kinds} "
            "files. Load it with pandas and pass the DataFrame"
        )
    if not path.is_file():
        hint = " (to load texts directly, pass a list of strings)" if not path.suffix else ""
        raise FileNotFoundError(f"no such file: {str(path)!r}{hint}")
    kind = FILE_TYPES[suffix]
    if kind == "parquet":
        return pd.read_parquet(path)
    text = _decode(path, encoding)
    if not text.strip():
        raise ValueError(f"file {str(path)!r} is empty: there is nothing to probe")
    if kind == "jsonl":
        return _parse_jsonl(text, path)
    # Texts are kept as written ("007" stays "007", "NA" stays "NA"); only the label column knows "missing".
    na_values = {label_column: _MISSING_STRINGS} if label_column is not None else None
    try:
        return pd.read_csv(
            io.StringIO(text),
            sep="\t" if kind == "tsv" else ",",
            quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL,  # TSV texts hold bare quotes
            dtype={text_column: str},
            keep_default_na=False,
            skip_blank_lines=False,  # a blank line is an empty text, reported, rather than silently dropped
            na_values=na_values,
        )
    except pd.errors.ParserError as error:
        raise ValueError(f"file {str(path)!r} is not a well-formed {kind.upper()} file ({error})") from error


def _decode(path: Path, encoding: str) -> str:
    try:
        codec = codecs.lookup(encoding)
    except LookupError as error:
        raise ValueError(
            f"unknown encoding {encoding!r}: pass a Python codec name such as 'utf-8' or 'latin-1'"
        ) from error
    data = path.read_bytes()
    try:
        text = data.decode(codec.name)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        raise ValueError(
            f"file {str(path)!r} is not valid {encoding} (byte 0x{byte} on line {line}): pass the file's encoding, "
            "e.g. load_texts(..., encoding='latin-1') or encoding='cp1252'"
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark would otherwise stick to the first column name


def _parse_jsonl(text: str, path: Path) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: texts may hold \x1c, \u2028 ...
        if not line.strip():
            continue  # blank lines between records (a trailing newline) are no records
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"line {number} of {str(path)!r} is not valid JSON ({error.msg}, column {error.colno}): each line "
                "must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"line {number} of {str(path)!r} is a JSON {type(record).__name__}, not an object: each line must be "
                'one object such as {"text": "...", "label": 1}'
            )
        records.append(record)
    if not records:
        raise ValueError(f"file {str(path)!r} holds no JSON records: there is nothing to probe")
    # from_records keeps values as they are (a None stays None, an int stays an int): the checks report them.
    return pd.DataFrame.from_records(records)


def _is_dataset_dict(source: Any) -> bool:
    column_names = getattr(source, "column_names", None)
    return isinstance(column_names, dict) and hasattr(source, "keys")


def _is_dataset(source: Any) -> bool:
    return isinstance(getattr(source, "column_names", None), list) and callable(getattr(source, "to_pandas", None))


def _read_dataset(dataset: Any, wanted: list[str], limit: int | None) -> pd.DataFrame:
    """The wanted columns of a ``datasets.Dataset`` (only those, and only ``limit`` rows, are converted)."""
    if limit is not None and hasattr(dataset, "select") and hasattr(dataset, "__len__"):
        dataset = dataset.select(range(min(limit, len(dataset))))
    if hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns(wanted)
    return dataset.to_pandas()


# ----------------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------------
def _check_texts(texts: pd.Series, name: str, column: str) -> None:
    values = texts.tolist()
    n = len(values)
    missing = [i for i, t in enumerate(values) if t is None or (isinstance(t, float) and t != t) or t is pd.NA]
    if missing:
        raise ValueError(
            f"{name}: the text column {column!r} has missing values in {_listed(missing, n)}: drop those rows or "
            "give them text"
        )
    wrong = [(i, type(t).__name__) for i, t in enumerate(values) if not isinstance(t, str)]
    if wrong:
        kinds = sorted({kind for _, kind in wrong})
        raise ValueError(
            f"{name}: the text column {column!r} holds non-text values ({', '.join(kinds)}) in "
            f"{_listed([i for i, _ in wrong], n)}: convert them to strings, or pass the right text_column"
        )
    blank = [i for i, t in enumerate(values) if not t.strip()]
    if blank:
        raise ValueError(
            f"{name}: the text column {column!r} is empty or whitespace only in {_listed(blank, n)}: drop those "
            "rows or give them text"
        )


def _rows(flags: Any) -> list[int]:
    return [i for i, flag in enumerate(flags) if flag]


def _listed(rows: list[int], total: int) -> str:
    """``"rows 3, 7 (of 10, counting from 0)"``, at most a few numbers."""
    shown = ", ".join(str(r) for r in rows[:_SHOWN])
    more = f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    noun = "row" if len(rows) == 1 else "rows"
    return f"{noun} {shown}{more} (of {total}, counting from 0)"
