"""Create or reuse a peer tool's own virtual environment, never touching our project's dependencies.

    spec = PeerSpec("ferret", ("ferret-xai==0.4.2", "transformers<5", "numpy<2", "pyarrow==23.0.1"))
    python = ensure_peer(spec)          # <cache root>/peers/ferret/bin/python, built on the first call
    subprocess.run([python, "script.py"])

How it is built (once per machine; minutes, mostly downloads):

1. ``python -m venv <folder>`` with our interpreter's base Python (the peer needs the same minor version:
   the torch wheel on this machine's disk is for CPython 3.11);
2. ``pip install torch==2.13.0`` alone first: that CPU wheel lies on the disk (pip's ``find-links``). Left to
   resolve torch itself, a peer's requirements would pull a multi-GB CUDA build;
3. ``pip install <requirements>``: the peer and the pins it needs beside it.

The folder counts as built only once its marker ``peer.json`` (the spec, the Python version and the installed
versions of the packages named) is written, last; a folder without it, or whose marker records another spec, is
removed and built again. A lock file (``fcntl.flock``) keeps two processes from building the same peer at once.
Root: ``$ATTN_PROBE_PEERS_DIR``, else ``<attn_probe cache root>/peers`` (:func:`attn_probe.models.cache.cache_root`).

A prepared interpreter instead (a machine without a network, or a GPU machine whose own torch the peer should use):
``$ATTN_PROBE_PEER_PYTHON_<NAME>`` (the spec's name upper-cased, anything but letters and digits as ``_``: e.g.
``ATTN_PROBE_PEER_PYTHON_FERRET``) names an executable that runs the peer's Python, e.g. a shell script that sets
``PYTHONPATH`` to a folder where the peer's wheels were installed (``pip install --no-deps --target``) and runs
``exec python3 "$@"``. It must set ``PYTHONPATH`` itself: the worker subprocess is started without ours
(:class:`benchmarks.peers.lm_common.PeerWorker`). Then :func:`ensure_peer` returns that path and builds nothing,
whatever ``install`` says, and :func:`read_marker` returns what the interpreter reports (``versions`` of the
packages the spec names, as ``None`` where one is missing, its Python version, and ``prepared``: the path), asked
once per process. Nothing checks that the versions match the spec: the marker records them, the caller decides.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PEERS_ENV = "ATTN_PROBE_PEERS_DIR"
PYTHON_ENV_PREFIX = "ATTN_PROBE_PEER_PYTHON_"  # + the spec's name: a prepared interpreter (see the module)
MARKER = "peer.json"
TORCH_REQUIREMENT = "torch==2.13.0"


class PeerUnavailable(RuntimeError):
    """A peer's environment is not built (and building was not allowed) or could not be built."""


@dataclass(frozen=True)
class PeerSpec:
    """What a peer environment holds: ``first`` is installed alone before ``requirements``."""

    name: str
    requirements: tuple[str, ...]
    first: tuple[str, ...] = (TORCH_REQUIREMENT,)
    check: str = ""  # Python code run in the new environment to prove it works (e.g. "import ferret")

    def key(self) -> dict[str, Any]:
        """The spec as its marker stores it (JSON: tuples become lists), with our Python's minor version."""
        key = {**asdict(self), "python": f"{sys.version_info.major}.{sys.version_info.minor}"}
        return json.loads(json.dumps(key))


def peers_root() -> Path:
    explicit = os.environ.get(PEERS_ENV)
    if explicit:
        return Path(explicit).expanduser()
    from attn_probe.models.cache import cache_root

    return cache_root() / "peers"


def peer_folder(spec: PeerSpec) -> Path:
    return peers_root() / spec.name


def peer_python(spec: PeerSpec) -> Path:
    return peer_folder(spec) / "bin" / "python"


def python_env_var(spec: PeerSpec) -> str:
    """The variable naming a prepared interpreter for ``spec``: ``ATTN_PROBE_PEER_PYTHON_FERRET`` for "ferret"."""
    return PYTHON_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", spec.name.upper())


def prepared_python(spec: PeerSpec) -> Path | None:
    """The prepared interpreter ``$ATTN_PROBE_PEER_PYTHON_<NAME>`` names, or None where the variable is unset or
    empty; :class:`PeerUnavailable` if it names no executable file."""
    name = python_env_var(spec)
    value = os.environ.get(name)
    if not value:
        return None
    python = Path(value).expanduser()
    if not python.is_absolute():  # the worker runs in another folder: resolve it here, by PATH or from here
        found = shutil.which(value) if os.sep not in value else None
        python = Path(found) if found else python.resolve()
    if not (python.is_file() and os.access(python, os.X_OK)):
        raise PeerUnavailable(f"${name} = {value!r} is not an executable file")
    return python


_PREPARED: dict[tuple[str, str], dict[str, Any]] = {}  # (spec name, interpreter) -> its marker, asked once


def _prepared_marker(spec: PeerSpec, python: Path) -> dict[str, Any]:
    """What the prepared interpreter reports: the versions of the spec's packages and its Python version."""
    key = (json.dumps(spec.key(), sort_keys=True), str(python))
    if key not in _PREPARED:
        code = (
            "import importlib.metadata as m, json, platform, sys\n"
            "out = {}\n"
            "for n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\n"
            "print(json.dumps({'python': platform.python_version(), 'versions': out}))\n"
        )
        # the environment the worker gets (PeerWorker): not our PYTHONPATH, the interpreter sets its own
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        names = _names((*spec.first, *spec.requirements))
        try:
            done = subprocess.run(
                [str(python), "-c", code, *names], capture_output=True, text=True, check=True, env=env, timeout=300
            )
            reported = json.loads(done.stdout.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or ""
            raise PeerUnavailable(
                f"the prepared {spec.name} interpreter {python} (${python_env_var(spec)}) failed: {error}\n{detail}"
            ) from error
        _PREPARED[key] = {
            "spec": spec.key(),
            "versions": reported["versions"],
            "python_version": reported["python"],
            "prepared": str(python),
        }
    return _PREPARED[key]


def read_marker(spec: PeerSpec) -> dict[str, Any] | None:
    """The marker of a finished build of exactly this spec, else None (a prepared interpreter: what it reports)."""
    prepared = prepared_python(spec)
    if prepared is not None:
        return _prepared_marker(spec, prepared)
    try:
        marker = json.loads((peer_folder(spec) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("spec") != spec.key() or not peer_python(spec).exists():
        return None
    return marker


def is_built(spec: PeerSpec) -> bool:
    return read_marker(spec) is not None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _base_python() -> str:
    """An interpreter of our Python version that is not inside a virtual environment (venv from a venv works
    too, but its ``home`` would point into ours)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if Path(base).exists() else sys.executable


def _run(command: list[str], log: Path, progress: bool) -> None:
    if progress:
        print(f"[peers] $ {' '.join(command)}", file=sys.stderr, flush=True)
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise PeerUnavailable(f"{command[2:5]} failed with exit status {done.returncode}; log {log}:\n{tail}")


def _installed_versions(python: Path, names: list[str]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _names(requirements: tuple[str, ...]) -> list[str]:
    names = []
    for requirement in requirements:
        name = requirement
        for separator in ("==", ">=", "<=", "<", ">", "~=", "!=", "[", ";", " "):
            name = name.split(separator)[0]
        names.append(name.strip())
    return names


def ensure_peer(spec: PeerSpec, *, install: bool = True, progress: bool = True) -> Path:
    """The peer's Python interpreter, building its environment first if needed (see the module).

    ``install=False``: raise :class:`PeerUnavailable` instead of building. A prepared interpreter
    (``$ATTN_PROBE_PEER_PYTHON_<NAME>``) is returned as it is, once it has answered (see the module)."""
    prepared = prepared_python(spec)
    if prepared is not None:
        _prepared_marker(spec, prepared)  # fails here, with its error, if it cannot even run
        return prepared
    if is_built(spec):
        return peer_python(spec)
    if not install:
        raise PeerUnavailable(f"the {spec.name} peer environment is not built at {peer_folder(spec)}")
    folder = peer_folder(spec)
    with _locked(folder.parent / f".{spec.name}.lock"):
        if is_built(spec):  # another process built it while we waited
            return peer_python(spec)
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        log = folder.parent / f"{spec.name}.install.log"
        log.write_text(f"building {spec.name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        start = time.perf_counter()
        _run([_base_python(), "-m", "venv", str(folder)], log, progress)
        python = peer_python(spec)
        _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], log, progress)
        if spec.first:
            _run([str(python), "-m", "pip", "install", *spec.first], log, progress)
        _run([str(python), "-m", "pip", "install", *spec.requirements], log, progress)
        if spec.check:
            _run([str(python), "-c", spec.check], log, progress)
        marker = {
            "spec": spec.key(),
            "versions": _installed_versions(python, _names((*spec.first, *spec.requirements))),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - start, 1),
        }
        partial = folder / (MARKER + ".tmp")
        partial.write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(partial, folder / MARKER)  # last: only now does the folder count as built
    return python
