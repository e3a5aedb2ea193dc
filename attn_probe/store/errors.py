"""What can go wrong with a run directory, each as an error with a one-line message that says what to do."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class StoreError(ValueError):
    """Base of every error raised by :mod:`attn_probe.store`."""


class NotARunError(StoreError):
    """The path is not an attn_probe run directory (missing, no manifest, a damaged or foreign manifest)."""


class RunMismatchError(StoreError):
    """The run directory was made for another model, methods, target or settings: runs are never mixed."""


class RunBusyError(StoreError):
    """Another process is writing this run directory right now."""


class ReadOnlyRunError(StoreError):
    """A run opened with :func:`~attn_probe.store.load_run` cannot be written."""


class DuplicateExampleError(StoreError):
    """An example id is already committed to the run (or appears twice in one chunk)."""


class CorruptChunkError(StoreError):
    """A committed file no longer matches its checksum (or is missing): it is never read."""


class TableSchemaError(StoreError):
    """A table's chunks have columns of types that cannot be combined (or a write would make them so)."""


class RunAccessError(StoreError):
    """A file or folder of a run cannot be read or written (permissions, a read-only disk, an I/O error).

    Nothing is dropped or deleted because of it: fix the access and run again.
    """


class DiskFullError(RunAccessError):
    """The disk holding the run is full: the chunk being written is not committed, the earlier ones are kept."""


class StoreWarning(UserWarning):
    """Something in a run directory was repaired on opening (a corrupt chunk dropped, leftovers removed)."""


_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}


def access_error(error: OSError, root: Path, *, writing: bool, kept: str) -> RunAccessError:
    """``error`` (an OSError met reading or writing the run at ``root``) as a one-line :class:`RunAccessError`.

    The message names the file, the reason and what to do; ``kept`` says what is kept (e.g. "the 12 examples
    committed so far are kept"). A full disk (or quota) gives a :class:`DiskFullError`.
    """
    where = error.filename if error.filename is not None else root
    with_root = Path(os.fspath(where))
    try:
        shown = with_root.relative_to(root).as_posix() if with_root != root else str(root)
    except ValueError:
        shown = str(with_root)
    reason = _REASONS.get(error.errno) or " ".join(str(error.strerror or error).split()).lower()
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"the disk holding run {root} is full ({reason}, writing {shown}): free some space on it, then run the "
            f"same command again (or Run.open with the same identity) to resume; {kept}"
        )
    verb = "write" if writing else "read"
    name = shown if shown == str(root) else f"{shown} of run {root}"
    if error.errno == errno.EROFS:
        advice = "the disk is mounted read-only: choose a directory on a writable disk"
    elif error.errno in (errno.EACCES, errno.EPERM):
        advice = f"give your user {verb} access to it (e.g. chmod -R u+rwX {root})"
        advice += ", or choose another directory" if writing else ", then try again"
    else:
        advice = "check the disk, then try again"
    return RunAccessError(f"cannot {verb} {name} ({reason}): {advice}; {kept}")
