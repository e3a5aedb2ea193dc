"""Faults on demand for run directories: unreadable files, read-only directories, a disk that fills up.

Permissions are real where they are enforced; as root (CAP_DAC_OVERRIDE) ``chmod`` stops nothing, so the same
faults are injected instead: the reads and writes of the paths concerned raise the OSError the kernel would.
Each helper is a context manager that undoes its fault on exit.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from attn_probe.store import chunks as chunks_module

REASON = {
    errno.EACCES: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@functools.cache
def permissions_enforced() -> bool:
    """Whether ``chmod 000`` stops this process from reading a file (False as root)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe"
        path.write_text("x")
        path.chmod(0)
        try:
            path.read_text()
        except PermissionError:
            return True
        finally:
            path.chmod(0o600)
    return False


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path → bytes), to show that nothing was changed or lost."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def os_error(code: int, path: object) -> OSError:
    return OSError(code, os.strerror(code), os.fspath(path))


def _under(path: object, root: Path) -> bool:
    if isinstance(path, int):  # a file descriptor
        return False
    try:  # realpath, not Path.resolve: that calls os.stat, which may be the patched one
        return Path(os.path.realpath(os.fspath(path))).is_relative_to(root)
    except (TypeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def unreadable(path: Path) -> Iterator[str]:
    """``path`` cannot be read: ``chmod 000``, or what the kernel would then refuse raises EACCES (a file: any
    open; a folder: listing it, and any stat or open of what is inside). Yields how ("chmod" / "injected")."""
    path = path.resolve()
    if permissions_enforced():
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(0)
        try:
            yield "chmod"
        finally:
            path.chmod(mode)
        return
    real_open, real_read_bytes, real_stat = builtins.open, Path.read_bytes, os.stat
    real_listdir, real_scandir = os.listdir, os.scandir
    folder = path.is_dir()

    def refused(target) -> bool:  # the folder itself can be stat'ed (its parent is searchable), not its content
        return _under(target, path) and not (folder and Path(os.path.realpath(os.fspath(target))) == path)

    def guarded_open(file, mode="r", *args, **kwargs):
        if refused(file) or (not folder and _under(file, path)):
            raise os_error(errno.EACCES, file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_read_bytes(self):
        if refused(self) or (not folder and _under(self, path)):
            raise os_error(errno.EACCES, self)
        return real_read_bytes(self)

    def guarded_stat(target, *args, **kwargs):
        if folder and refused(target):
            raise os_error(errno.EACCES, target)
        return real_stat(target, *args, **kwargs)

    def guarded_list(real):
        def listing(target=".", *args, **kwargs):
            if folder and _under(target, path):
                raise os_error(errno.EACCES, target)
            return real(target, *args, **kwargs)

        return listing

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", guarded_open)
        patch.setattr(Path, "read_bytes", guarded_read_bytes)
        patch.setattr(os, "stat", guarded_stat)
        patch.setattr(os, "listdir", guarded_list(real_listdir))
        patch.setattr(os, "scandir", guarded_list(real_scandir))
        yield "injected"


@contextlib.contextmanager
def read_only(root: Path, code: int = errno.EROFS) -> Iterator[int]:
    """Nothing can be created, changed or removed in ``root`` (it may not exist yet: then its parent is read-only).

    Real permissions where they are enforced (the errno is then EACCES); otherwise every write under the folder
    raises ``code`` (EROFS: a read-only mount; EACCES). Yields the errno in effect.
    """
    root = root.resolve()
    folder = root if root.exists() else root.parent
    if permissions_enforced():
        changed = []
        for path in [folder, *folder.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            changed.append((path, mode))
            path.chmod(mode & ~0o222)
        try:
            yield errno.EACCES
        finally:
            for path, mode in reversed(changed):
                path.chmod(mode)
        return
    real = {name: getattr(os, name) for name in ("open", "mkdir", "replace", "rename", "unlink", "rmdir", "chmod")}
    real_open = builtins.open

    def guarded_builtin_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and _under(file, folder):
            raise os_error(code, file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & _WRITE_FLAGS and _under(path, folder):
            raise os_error(code, path)
        return real["open"](path, flags, *args, **kwargs)

    def guard(name):
        def guarded(path, *args, **kwargs):
            if _under(path, folder):
                raise os_error(code, path)
            return real[name](path, *args, **kwargs)

        return guarded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", guarded_builtin_open)
        patch.setattr(os, "open", guarded_os_open)
        for name in ("mkdir", "replace", "rename", "unlink", "rmdir", "chmod"):
            patch.setattr(os, name, guard(name))
        yield code


@contextlib.contextmanager
def disk_fills_up(after_chunks: int, code: int = errno.ENOSPC, fails: str = "tables/") -> Iterator[list[str]]:
    """The disk is full once ``after_chunks`` more chunks are committed: from then on every file written whose
    path contains ``fails`` raises ``code``, as the kernel's write would. Yields the paths refused so far."""
    real = chunks_module.atomic_write_bytes
    committed = [0]
    refused: list[str] = []

    def filling(path: Path, data: bytes) -> None:
        if committed[0] >= after_chunks and fails in Path(path).as_posix():
            refused.append(Path(path).as_posix())
            raise os_error(code, path)
        real(path, data)
        if Path(path).parent.name == chunks_module.CHUNKS:
            committed[0] += 1

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunks_module, "atomic_write_bytes", filling)
        yield refused
