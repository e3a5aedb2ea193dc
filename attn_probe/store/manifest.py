"""The manifest of a run: what the run is (its identity), how it was made, and how far it got.

``manifest.json`` (written atomically, never in place)::

    {
      "format": "attn_probe.run", "format_version": 1,
      "identity": {...},      # what must match to resume: model + fingerprint, methods, target, result settings
      "settings": {...},      # free settings (batch size, device ...): recorded, not compared
      "versions": {...},      # attn_probe, python, torch, transformers, captum, pandas, pyarrow, numpy
      "version_changes": [],  # resumed with other package versions: when and which
      "status": "running" | "complete",
      "created": ..., "updated": ..., "finished": ..., "elapsed_s": ..., "sessions": 1,
      "counts": {"examples": ..., "chunks": ..., "rows": {table: n}, "samples": {name: n}},
      "extra": {...}          # whatever finish(extra=...) was given
    }

The identity is compared as JSON data, so ``("a", "b")`` and ``["a", "b"]`` are the same identity while
``1`` and ``"1"`` are not. The commit records under ``chunks/`` are the truth about what is done; the counts
here are a convenience refreshed at every write.
"""

from __future__ import annotations

import datetime as _datetime
import hashlib
import math
import os
import platform
import reprlib
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from attn_probe.store.errors import StoreError

FORMAT = "attn_probe.run"
FORMAT_VERSION = 1
VERSIONED_PACKAGES = ("attn_probe", "torch", "transformers", "captum", "pandas", "pyarrow", "numpy")

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = 6
_short.maxdict = 6


def now() -> str:
    """The current time, UTC, ISO 8601 with seconds."""
    return _datetime.datetime.now(_datetime.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages whose versions can change results (None: not installed).

    Read from the installed distributions' metadata: nothing is imported.
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["attn_probe"] is None:
        from attn_probe import __version__

        versions["attn_probe"] = __version__
    return versions


def normalize(value: Any, where: str = "identity") -> Any:
    """``value`` as plain JSON data (dict / list / str / int / float / bool / None), or a :class:`StoreError`.

    Tuples become lists, numpy scalars and arrays their Python values, paths strings. Anything else (an
    object whose ``str`` could change between runs, a NaN that never equals itself) is refused with the key
    it was found under.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"{where} is {value!r}: use a finite number or a string, NaN never equals itself")
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreError(f"{where} has the key {key!r}: keys must be strings")
            result[key] = normalize(item, f"{where}.{key}")
        return result
    if isinstance(value, (list, tuple)):
        return [normalize(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if hasattr(value, "tolist") and type(value).__module__.startswith("numpy"):
        return normalize(value.tolist(), where)
    raise StoreError(f"{where} is a {type(value).__name__}: use JSON data (str, int, float, bool, None, lists, dicts)")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = value


_MISSING = object()


def identity_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Each key whose value differs, as ``"key (A there, B here)"``; nested keys are dotted."""
    there: dict[str, Any] = {}
    here: dict[str, Any] = {}
    _flatten(stored, "", there)
    _flatten(requested, "", here)
    differences = []
    for key in sorted(set(there) | set(here)):
        old, new = there.get(key, _MISSING), here.get(key, _MISSING)
        if old != new or type(old) is not type(new):
            old_text = "absent" if old is _MISSING else _short.repr(old)
            new_text = "absent" if new is _MISSING else _short.repr(new)
            differences.append(f"{key or '<identity>'} ({old_text} there, {new_text} here)")
    return differences


def new_manifest(identity: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A fresh manifest for a run that has done nothing yet."""
    stamp = now()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "settings": settings,
        "versions": package_versions(),
        "version_changes": [],
        "status": "running",
        "created": stamp,
        "updated": stamp,
        "finished": None,
        "elapsed_s": 0.0,
        "sessions": 0,
        "counts": {"examples": 0, "chunks": 0, "rows": {}, "samples": {}},
        "extra": {},
    }


def check_manifest(payload: Any, where: str) -> str | None:
    """Why ``payload`` is not a manifest this version can use, or None."""
    if not isinstance(payload, dict):
        return (
            f"{where} is not a JSON object, so not an attn_probe run manifest: restore it, or choose another directory"
        )
    if payload.get("format") != FORMAT:
        return (
            f"{where} is not an attn_probe run manifest (format {payload.get('format')!r}): the directory holds "
            "something else; choose another directory"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return (
            f"{where} has format version {version!r}, newer than this attn_probe reads ({FORMAT_VERSION}): "
            "upgrade attn_probe to read it"
        )
    if not isinstance(payload.get("identity"), dict):
        return f"{where} has no identity (damaged): restore it from a backup, or choose another directory"
    return None


def model_fingerprint(model: Any) -> str:
    """A sha256 over a torch model's state (names, dtypes, shapes and every byte): same weights, same value.

    Reads every parameter and buffer once (about a second per GB); tensors on an accelerator are copied to
    the CPU one at a time.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        data = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()
