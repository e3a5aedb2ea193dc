"""Timing helpers shared by the benchmark entries, built for a noisy, shared machine.

Absolute times on a machine whose cores other jobs also use drift by tens of percent from one second
to the next. What stays meaningful is how two implementations compare *at the same moment*, so
:func:`compare` interleaves them (A B A B ...), times several calls per sample so that one sample is
long enough for the clock and short enough to sit inside one "weather" period, and reports medians
(robust to the occasional preempted sample) and the spread of the paired ratios.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Comparison:
    """Per-call times (seconds) of two interleaved functions, sample by sample."""

    ours: list[float]
    reference: list[float]
    calls_per_sample: int  # of ours (and of the reference too, unless reference_calls_per_sample says otherwise)
    reference_calls_per_sample: int | None = None

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def reference_median(self) -> float:
        return statistics.median(self.reference)

    @property
    def ratio(self) -> float:
        """median(ours) / median(reference): the headline number a target is checked against."""
        return self.ours_median / self.reference_median

    def paired_ratio_quartiles(self) -> tuple[float, float]:
        """25th and 75th percentile of ours_i / reference_i over adjacent samples.

        Adjacent samples share the machine's load, so their ratio cancels most of the drift; the
        width of this interval says how far the headline ratio can be trusted.
        """
        ratios = sorted(o / r for o, r in zip(self.ours, self.reference, strict=True))
        return _quantile(ratios, 0.25), _quantile(ratios, 0.75)

    @staticmethod
    def iqr_ratio(times: list[float]) -> float:
        """q75 / q25 of one side's times: 1.0 is perfectly steady, 1.2 means ±10 % noise."""
        ordered = sorted(times)
        return _quantile(ordered, 0.75) / _quantile(ordered, 0.25)


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (statistics.quantiles needs n >= 2)."""
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued work on ``device``: CUDA calls return before the kernels end."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _time_calls(fn: Callable[[], Any], calls: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


def compare(
    ours: Callable[[], Any],
    reference: Callable[[], Any],
    *,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 21,
    min_sample_s: float = 0.005,
    budget_s: float | None = None,
    same_calls: bool = True,
) -> Comparison:
    """Time ``ours`` against ``reference``, interleaved, ``repeats`` samples each.

    Each sample runs the function ``calls_per_sample`` times, chosen so that one sample lasts at
    least ``min_sample_s`` (tiny cases would otherwise measure the clock and Python). If ``budget_s``
    is given, ``repeats`` is lowered (never below 5) so that the whole comparison fits the budget:
    big cases get fewer, equally informative, samples. The order inside a pair alternates (AB, BA,
    ...) so neither side always runs on the caches the other one warmed up.

    ``same_calls=False`` calibrates each side on its own: for sides a thousand times apart (attention flow
    against networkx), one call of the fast side per sample would time a cold start after the slow side's
    call (caches and branch predictors full of the other's work), not the per-call cost of repeated use.
    """
    sync = synchronizer(device)
    for _ in range(warmup):
        ours()
        reference()
    # By default calibrate on the slower of the two so both sides get the same number of calls per sample.
    single_ours, single_reference = _time_calls(ours, 1, sync), _time_calls(reference, 1, sync)
    single = max(single_ours, single_reference)
    calls = max(1, math.ceil(min_sample_s / max(single, 1e-9)))
    ours_calls = calls if same_calls else max(1, math.ceil(min_sample_s / max(single_ours, 1e-9)))
    reference_calls = calls if same_calls else max(1, math.ceil(min_sample_s / max(single_reference, 1e-9)))
    if budget_s is not None:
        per_pair = ours_calls * single_ours + reference_calls * single_reference
        affordable = int(budget_s / max(per_pair, 1e-9))
        repeats = max(5, min(repeats, affordable))
    ours_times: list[float] = []
    reference_times: list[float] = []
    for index in range(repeats):
        if index % 2 == 0:
            ours_times.append(_time_calls(ours, ours_calls, sync))
            reference_times.append(_time_calls(reference, reference_calls, sync))
        else:
            reference_times.append(_time_calls(reference, reference_calls, sync))
            ours_times.append(_time_calls(ours, ours_calls, sync))
    return Comparison(ours_times, reference_times, ours_calls, None if same_calls else reference_calls)


def _cpu_model() -> str:
    """The CPU's marketing name (platform.processor() is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """What a reader needs to interpret the numbers: cores, threads, versions, load at the start."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if torch.device(device).type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda
    return info
