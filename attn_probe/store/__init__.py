"""Runs on disk: a manifest and Parquet tables written in chunks as examples finish, resumable after any kill.

    from attn_probe.store import Run, load_run

    with Run.open("runs/demo", identity={"model": "bert-tiny", "fingerprint": fp, "methods": ["saliency"]}) as run:
        for ids, tables in batches():                 # skip what run.done() already holds
            run.write(ids, tables)                    # one chunk: Parquet files, then a commit record
        run.finish()

    load_run("runs/demo").table("scores")             # read-only, sorted by example_id

Files: ``manifest.py`` (identity, versions, status), ``chunks.py`` (commit records, checksums, atomic
files), ``run.py`` (:class:`Run`, :func:`load_run`), ``reduce.py`` (attention summaries per layer / head,
the chosen sample of full matrices), ``errors.py`` (every error a one-line message saying what to do: a
damaged, foreign or unreadable run, a read-only or full disk).
"""

from attn_probe.store.errors import (
    CorruptChunkError,
    DiskFullError,
    DuplicateExampleError,
    NotARunError,
    ReadOnlyRunError,
    RunAccessError,
    RunBusyError,
    RunMismatchError,
    StoreError,
    StoreWarning,
    TableSchemaError,
)
from attn_probe.store.manifest import model_fingerprint, package_versions
from attn_probe.store.reduce import SUMMARY_COLUMNS, select_sample, summarise_attention, summarise_batch
from attn_probe.store.run import Run, load_run

__all__ = [
    "SUMMARY_COLUMNS",
    "CorruptChunkError",
    "DiskFullError",
    "DuplicateExampleError",
    "NotARunError",
    "ReadOnlyRunError",
    "Run",
    "RunAccessError",
    "RunBusyError",
    "RunMismatchError",
    "StoreError",
    "StoreWarning",
    "TableSchemaError",
    "load_run",
    "model_fingerprint",
    "package_versions",
    "select_sample",
    "summarise_attention",
    "summarise_batch",
]
