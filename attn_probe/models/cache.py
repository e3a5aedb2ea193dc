"""Where attn_probe keeps what it builds once (converted models, fine-tuned models, parsed data sets).

Some of what the offline models and data sets need is slow to make (a GGUF file dequantised and saved as
safetensors, a fine-tuned classifier, a downloaded archive parsed into Parquet), so it is made once per machine
and kept in a user cache, never in the source tree.

The cache can be interrupted at any point (Ctrl-C, a killed CI job, a full disk), so nothing is ever written
in place: files are written to a temporary name in the same folder and moved over with ``os.replace``, and
directories are built under a temporary name, finished with a completion marker written last, and then
renamed into place. A cache entry is therefore either complete or absent; an entry whose marker is missing is
treated as absent and rebuilt.

Root, first match wins: ``$ATTN_PROBE_CACHE``, ``$XDG_CACHE_HOME/attn_probe``, ``~/.cache/attn_probe``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "ATTN_PROBE_CACHE"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create owner-only entries; a finished cache entry gets the usual permissions instead.
_UMASK = _read_umask()
FILE_MODE, DIRECTORY_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def cache_root() -> Path:
    """The cache root, not created: ``$ATTN_PROBE_CACHE``, else ``$XDG_CACHE_HOME/attn_probe``, else the default.

    The default is ``~/.cache/attn_probe``.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "attn_probe"
    return Path.home() / ".cache" / "attn_probe"


def cache_dir(*parts: str) -> Path:
    """The folder ``<cache root>/<parts...>``, created (with its parents) if it does not exist yet."""
    path = cache_root().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"cannot create the attn_probe cache folder {path} ({error}); point ${CACHE_ENV} to a writable folder"
        ) from error
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on a clean exit it is moved onto ``path`` in one step.

    For writers that want a file name rather than bytes (``DataFrame.to_parquet``, ``tarfile``): write to the
    yielded path. If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        os.chmod(temporary_path, FILE_MODE)
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for text, encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """:func:`atomic_write_bytes` for a JSON document (indented, keys in the order given)."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or unreadable (a marker that does not count)."""
    try:
        with open(path, encoding="utf-8") as stream:
            payload = json.load(stream)
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


@contextlib.contextmanager
def building_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; on a clean exit it becomes ``final``.

    Write everything into the yielded directory, the completion marker last. On a clean exit an existing
    ``final`` (an incomplete or stale entry) is removed and the new directory is renamed into its place; if
    another process finished the same entry first, its directory is replaced by ours, which is equivalent.
    If the block raises, the temporary directory is deleted and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".building", dir=final.parent))
    try:
        yield temporary
        os.chmod(temporary, DIRECTORY_MODE)
        if final.exists():
            # Move the old entry aside first so that the rename below never meets a non-empty directory.
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".stale", dir=final.parent))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
