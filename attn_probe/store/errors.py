"""What can go wrong with a run directory, each as an error with a one-line message that says what to do."""

from __future__ import annotations


class StoreError(ValueError):
    """Base of every error raised by :mod:`attn_probe.store`."""


class NotARunError(StoreError):
    """The path is not an attn_probe run directory (missing, no manifest, or an unreadable manifest)."""


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


class StoreWarning(UserWarning):
    """Something in a run directory was repaired on opening (a corrupt chunk dropped, leftovers removed)."""
