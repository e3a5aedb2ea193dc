"""What the language-model peer entries (``inseq``, ``transformer_lens``) share: the worker pipe, the interleaved
timing and the agreement numbers.

A peer runs in its own virtual environment (:mod:`benchmarks.peers.venv`) as a worker subprocess that speaks JSON
lines: one request per line on its stdin, one reply per line on its stdout (``{"ok": true, ...}`` or ``{"ok":
false, "error", "traceback"}``). The worker times its own work with ``time.perf_counter`` and replies with the
seconds, so the pipe is not timed; ours is timed here, in-process. The two sides alternate (ours, peer, peer,
ours, ...) so that both see the same machine load, and each has been warmed up before the first sample.

Nothing here imports a peer: these helpers run in our venv (and are tested there without any peer installed).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PEERS_ONLY_ON_CPU = (
    "the peer environments hold the CPU torch wheel (the one on this machine's disk), so the peer entries run on "
    "the CPU only; run them without --device cuda"
)


def ready_peer(spec: Any, *, install: bool) -> tuple[Path, dict[str, Any]]:
    """``(python, marker)`` of the peer's environment (a :class:`benchmarks.peers.venv.PeerSpec`), built by
    ``venv.ensure_peer`` first if it is not (``install=False``: raise ``PeerUnavailable`` instead)."""
    from benchmarks.peers.venv import ensure_peer, read_marker

    python = ensure_peer(spec, install=install)
    return python, read_marker(spec) or {}


class PeerWorker:
    """A peer's worker subprocess (``python script``), JSON lines in and out; its stderr goes to a temporary file."""

    def __init__(self, python: Path | str, script: Path | str, name: str) -> None:
        self.name = name
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        # Never the hub: every model is loaded from a local directory.
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"{name}-worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(python), str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=env, cwd=tempfile.gettempdir(),
        )  # fmt: skip

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
            self.process.stdin.flush()
        except OSError as error:
            raise RuntimeError(
                f"the {self.name} worker is gone ({error}); its stderr ends with:\n{self.tail()}"
            ) from error
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died during {cmd!r}; its stderr ends with:\n{self.tail()}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"the {self.name} worker failed on {cmd!r}: {reply['error']}\n{reply['traceback']}")
        return reply

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
                self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self) -> PeerWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------
def interleaved(
    ours: Callable[[], Any],
    peer: Callable[[], float],
    repeats: int,
    *,
    sync: Callable[[], None] = lambda: None,
    warmup: bool = True,
) -> tuple[list[float], list[float]]:
    """``repeats`` seconds of each side, alternating the order (ours-peer, peer-ours, ...), after one warm-up each
    (``warmup=False``: both sides already ran this work, e.g. for the agreement check).

    ``ours`` is called and timed here; ``peer`` does its work and returns the seconds it measured itself."""

    def timed_ours() -> float:
        sync()
        start = time.perf_counter()
        ours()
        sync()
        return time.perf_counter() - start

    if warmup:
        timed_ours()
        peer()
    ours_times: list[float] = []
    peer_times: list[float] = []
    for index in range(repeats):
        if index % 2 == 0:
            ours_times.append(timed_ours())
            peer_times.append(float(peer()))
        else:
            peer_times.append(float(peer()))
            ours_times.append(timed_ours())
    return ours_times, peer_times


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timing_fields(ours_times: Sequence[float], peer_times: Sequence[float], per: int) -> dict[str, Any]:
    """The runner's timing columns, per example (``per`` examples in one timed call).

    ``ratio`` = ours / peer (the runner's convention: below 1, ours is faster); ``speedup`` = peer / ours (how many
    times longer the peer takes for the same work)."""
    ours_s = [t / per for t in ours_times]
    peer_s = [t / per for t in peer_times]
    ratio = statistics.median(ours_s) / statistics.median(peer_s)
    paired = [o / p for o, p in zip(ours_s, peer_s, strict=True)]
    return {
        "ours_median_s": statistics.median(ours_s),
        "reference_median_s": statistics.median(peer_s),
        "ratio": ratio,
        "speedup": 1.0 / ratio,
        "paired_ratio_q25": quantile(paired, 0.25),
        "paired_ratio_q75": quantile(paired, 0.75),
        "per": "example",
        "n_examples": per,
        "samples": len(ours_s),
        "ours_times_s": ours_s,
        "reference_times_s": peer_s,
    }


# ----------------------------------------------------------------------------------------------------
# agreement
# ----------------------------------------------------------------------------------------------------
def rank_agreement(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(Spearman rho, Kendall tau-b)`` of two score vectors over the same tokens; NaN where one is constant."""
    from scipy.stats import kendalltau, spearmanr

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"score vectors of different lengths: {x.shape} vs {y.shape}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(x, y).statistic), float(kendalltau(x, y).statistic)


def relative_max_abs_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """``max |a - b| / max |b|``: the largest difference as a share of the largest score (1e-12 floor)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(x - y).max() / max(float(np.abs(y).max()), 1e-12))


def agreement_fields(prefix: str, ours: Sequence[np.ndarray], peer: Sequence[Sequence[float]]) -> dict[str, float]:
    """Per-prompt Spearman / Kendall of ``ours[i]`` and ``peer[i]``, summarised as ``<prefix>_spearman_mean/min``
    and ``<prefix>_kendall_mean/min`` (NaN prompts, a constant vector, left out of the summaries)."""
    pairs = [rank_agreement(o, p) for o, p in zip(ours, peer, strict=True)]
    out: dict[str, float] = {}
    for index, name in enumerate(("spearman", "kendall")):
        values = [pair[index] for pair in pairs if not math.isnan(pair[index])]
        out[f"{prefix}_{name}_mean"] = statistics.fmean(values) if values else float("nan")
        out[f"{prefix}_{name}_min"] = min(values) if values else float("nan")
    return out
