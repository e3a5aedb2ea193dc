"""Entry ``efficient_attention``: how time and peak memory grow with the sequence length, per attention kind.

One ``MultiHeadAttention`` layer (batch 1, embed 256, 4 heads of 64, float32, eval mode, under
``torch.inference_mode()``, self-attention, no position variant, no mask), from 512 to 16,384 tokens
(``--quick``: 128, 256, 512), in these variants:

- ``full_explicit``: full attention with ``need_weights=True``: the explicit path, ``[b, h, n, n]`` weights;
- ``full_sdpa``: full attention without weights: ``F.scaled_dot_product_attention`` (on the CPU, for
  float32 without a mask, a flash-style kernel: O(n^2) time, O(n) memory);
- ``sliding``: ``SlidingWindow(window=32, global_tokens=1)`` without weights (compact path);
- ``block_sparse``: ``BlockSparse(block_size=64)`` without weights;
- ``linear`` and ``linear_causal``: ``LinearAttention()`` without weights, non-causal and causal.

Each (variant, n) row holds the median and the fastest time (one call per sample, as many samples as
fit ~4 s, 3 at least), the ratio of medians to ``full_sdpa`` at the same n (``reference_median_s``), and
the peak memory.
``full_explicit`` sizes whose weights would need more than ~4 GiB (estimated as two ``[b, h, n, n]``
float32 tensors alive at once: the logits and the weights) are not run: the row says ``skipped`` with
the estimate, and its times are 0.

**Peak memory** (``peak_bytes``): the most bytes of tensors allocated during one call, beyond those alive
before it (inputs and parameters), as ``torch.profiler`` (``profile_memory=True``) records every
allocation and free of PyTorch's CPU allocator: the peak of the running sum of its ``[memory]`` events
in time order. That counts what the attention itself asks for (logits, weights, copies, the output), not
the process: ``tracemalloc`` does not see torch's allocator, and ``ru_maxrss`` also moves with malloc's
caching and with everything else the process ever did. On CUDA it is ``torch.cuda.max_memory_allocated``
after a reset.

**Growth exponents**: per variant a ``fit/<variant>`` row with the least-squares slope of ``log(time)``
(the fastest sample of each size: on a shared machine other jobs only ever add time, so the minimum is
the steadiest estimate of the work) and ``log(peak bytes)`` against ``log(n)``, over all sizes
(``time_exponent``, ``memory_exponent``) and over the largest half of them (``*_exponent_large``, where
fixed per-call costs no longer flatten the curve). In that row ``ratio`` is ``time_exponent_large``,
``ours_median_s`` the fastest time at the largest ``n`` and ``reference_median_s`` the fastest at the
smallest. Expected: ~2 in time for full attention (and ~2 in memory with weights, ~1 for SDPA), ~1 in
both for the sliding window, block-sparse and linear attention. Their target is 1.5 on both large-n
exponents (missed targets print ``NO``, never fail): halfway between linear and quadratic, so it flags an
accidental ``n^2`` term, while the slopes of linear work measured on a shared 2-core machine (other jobs,
working sets outgrowing the caches at 8-16k tokens) come out at ~1.1-1.4 in time.

**Correctness rides along**: up to n = 4096 (``CHECK_MAX``; all sizes with ``--quick``) each row compares
the output with a dense reference computed from the same projections without our module:
``softmax(q kᵀ / sqrt(d) + mask) v`` with the pattern as the mask (all keys for ``full_*``), and
``(φ(q) φ(k)ᵀ / rowsum) v`` (lower-triangular for causal) for linear attention; ``full_explicit`` also
compares its weights. A difference above 1e-5 sets ``outputs_agree`` False (the runner then exits 1).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from attn_probe.attention import BlockSparse, LinearAttention, MultiHeadAttention, SlidingWindow, SparsePattern
from attn_probe.attention.linear import elu_feature_map
from benchmarks.timing import synchronizer

FULL_SIZES = [512, 1024, 2048, 4096, 8192, 16384]
QUICK_SIZES = [128, 256, 512]
BATCH, EMBED, HEADS = 1, 256, 4
WINDOW, GLOBAL_TOKENS, BLOCK_SIZE = 32, 1, 64
MEMORY_LIMIT_BYTES = 4 * 2**30  # full attention sizes above this are skipped
CHECK_MAX = 4096  # the dense reference is O(n^2): checked up to here
AGREEMENT_TOLERANCE = 1e-5
EXPONENT_TARGET = 1.5  # for the sub-quadratic kinds, on both large-n exponents: between linear (1) and quadratic (2)

#: variant -> (attention kind, causal, need_weights)
VARIANTS: dict[str, tuple[Any, bool, bool]] = {
    "full_explicit": (None, False, True),
    "full_sdpa": (None, False, False),
    "sliding": (SlidingWindow(window=WINDOW, global_tokens=GLOBAL_TOKENS), False, False),
    "block_sparse": (BlockSparse(block_size=BLOCK_SIZE), False, False),
    "linear": (LinearAttention(), False, False),
    "linear_causal": (LinearAttention(), True, False),
}


# --------------------------------------------------------------------------------------------------
def peak_allocated_bytes(fn: Callable[[], Any], device: str = "cpu") -> int:
    """The peak of tensor bytes allocated while ``fn()`` runs, beyond what was alive before it.

    CPU: the running sum of the allocations and frees ``torch.profiler`` records (``profile_memory=True``),
    in time order. CUDA: ``max_memory_allocated`` after a reset, minus what was allocated before.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    events = sorted(
        (event.start_ns(), event.nbytes())
        for event in profiler.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    return _running_peak(events)


def _running_peak(events: list[tuple[int, int]]) -> int:
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


def growth_exponent(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of ``log(value)`` against ``log(size)``; None with fewer than two points."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v > 0]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def estimated_full_bytes(n: int) -> int:
    """What full attention with weights holds at once: logits and weights, ``[b, h, n, n]`` float32 each."""
    return 2 * BATCH * HEADS * n * n * 4


# --------------------------------------------------------------------------------------------------
def dense_reference(module: MultiHeadAttention, x: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output, weights)`` computed from ``module``'s projections by the textbook dense formula."""
    batch, n, _ = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, n, module.num_heads, module.head_dim).transpose(1, 2)

    q, k, v = heads(module.q_proj(x)), heads(module.k_proj(x)), heads(module.v_proj(x))
    visible = torch.ones(n, n, dtype=torch.bool)
    if isinstance(module.kind, SparsePattern):
        visible = module.kind.dense_mask(n)
    if causal:
        visible = visible.tril()
    if isinstance(module.kind, LinearAttention):
        scores = (elu_feature_map(q) @ elu_feature_map(k).transpose(-1, -2)) * visible
        weights = scores / scores.sum(-1, keepdim=True)
    else:
        logits = (q @ k.transpose(-1, -2)) * module.scale
        weights = logits.masked_fill(~visible, float("-inf")).softmax(-1)
    merged = (weights @ v).transpose(1, 2).reshape(batch, n, module.num_heads * module.head_dim)
    return module.out_proj(merged), weights


def _time(fn: Callable[[], Any], device: str, budget_s: float, max_samples: int) -> list[float]:
    sync = synchronizer(device)
    sync()
    start = time.perf_counter()
    fn()  # warm-up, and the estimate of one call
    sync()
    single = time.perf_counter() - start
    samples = max(3, min(max_samples, int(budget_s / max(single, 1e-9))))
    times = []
    for _ in range(samples):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def run_case(variant: str, n: int, device: str, *, quick: bool) -> dict[str, Any]:
    """Time, peak memory and (where affordable) agreement with the dense reference of one (variant, n)."""
    kind, causal, need_weights = VARIANTS[variant]
    row: dict[str, Any] = {
        "case": f"{variant}/n{n}",
        "variant": variant,
        "n": n,
        "batch": BATCH,
        "embed": EMBED,
        "heads": HEADS,
        "kind": repr(kind) if kind is not None else "full",
        "causal": causal,
        "need_weights": need_weights,
        "target": None,
        "meets_target": True,
    }
    if need_weights and estimated_full_bytes(n) > MEMORY_LIMIT_BYTES:
        return {
            **row,
            "case": f"{variant}/n{n} (skipped: > 4 GiB)",
            "skipped": True,
            "skip_reason": f"weights need ~{estimated_full_bytes(n) / 2**30:.1f} GiB (> 4 GiB): not run",
            "estimated_peak_bytes": estimated_full_bytes(n),
            "ours_median_s": 0.0,
            "reference_median_s": 0.0,
            "ratio": 0.0,
            "outputs_agree": True,
            "reference_checked": False,
        }
    torch.manual_seed(0)
    module = MultiHeadAttention(EMBED, HEADS, kind=kind).to(device).eval()
    x = torch.randn(BATCH, n, EMBED, generator=torch.Generator().manual_seed(n)).to(device)

    def call() -> Any:
        return module(x, causal=causal, need_weights=need_weights)

    with torch.inference_mode():
        check = quick or n <= CHECK_MAX
        output_diff = weights_diff = None
        if check:
            output, weights = call()
            ref_output, ref_weights = dense_reference(module, x, causal)
            output_diff = (output - ref_output).abs().max().item()
            if weights is not None:
                weights_diff = (weights - ref_weights).abs().max().item()
            del output, weights, ref_output, ref_weights
        peak = peak_allocated_bytes(call, device)
        times = _time(call, device, budget_s=0.2 if quick else 4.0, max_samples=5 if quick else 15)
    median = statistics.median(times)
    return {
        **row,
        "skipped": False,
        "ours_median_s": median,
        "ours_min_s": min(times),
        "times_s": times,
        "samples": len(times),
        "peak_bytes": peak,
        "peak_mib": peak / 2**20,
        "output_max_abs_diff": output_diff,
        "weights_max_abs_diff": weights_diff,
        "reference_checked": check,
        "outputs_agree": (output_diff is None or output_diff < AGREEMENT_TOLERANCE)
        and (weights_diff is None or weights_diff < AGREEMENT_TOLERANCE),
    }


def fit_row(variant: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The growth exponents of one variant over its measured sizes."""
    measured = sorted((r for r in rows if r["variant"] == variant and not r["skipped"]), key=lambda r: r["n"])
    sizes = [r["n"] for r in measured]
    times = [r["ours_min_s"] for r in measured]
    peaks = [float(r["peak_bytes"]) for r in measured]
    large = slice(len(measured) // 2, None) if len(measured) >= 4 else slice(None)
    time_large = growth_exponent(sizes[large], times[large])
    memory_large = growth_exponent(sizes[large], peaks[large])
    subquadratic = variant not in ("full_explicit", "full_sdpa")
    target = EXPONENT_TARGET if subquadratic else None
    meets = True
    if subquadratic:
        meets = time_large is not None and memory_large is not None and max(time_large, memory_large) <= target
    return {
        "case": f"fit/{variant}",
        "variant": variant,
        "fit": True,
        "sizes": sizes,
        "skipped_sizes": sorted(r["n"] for r in rows if r["variant"] == variant and r["skipped"]),
        "time_exponent": growth_exponent(sizes, times),
        "memory_exponent": growth_exponent(sizes, peaks),
        "time_exponent_large": time_large,
        "memory_exponent_large": memory_large,
        "ours_median_s": times[-1] if times else 0.0,
        "reference_median_s": times[0] if times else 0.0,
        "ratio": time_large if time_large is not None else 0.0,
        "target": target,
        "meets_target": meets,
    }


def run(
    quick: bool, device: str, *, sizes: list[int] | None = None, variants: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every variant at every size, then one ``fit/<variant>`` row each. ``sizes`` / ``variants``: for tests."""
    chosen_sizes = sizes if sizes is not None else (QUICK_SIZES if quick else FULL_SIZES)
    chosen = variants if variants is not None else list(VARIANTS)
    rows = []
    for n in chosen_sizes:
        at_n = [run_case(variant, n, device, quick=quick) for variant in chosen]
        sdpa = next((r for r in at_n if r["variant"] == "full_sdpa" and not r["skipped"]), None)
        for row in at_n:
            if not row["skipped"]:
                row["reference_median_s"] = sdpa["ours_median_s"] if sdpa else row["ours_median_s"]
                row["ratio"] = row["ours_median_s"] / row["reference_median_s"]
        rows.extend(at_n)
    fits = [fit_row(variant, rows) for variant in chosen]
    print("growth exponents (log-log slope vs n; all sizes / largest half):")
    for fit in fits:
        print(
            f"  {fit['variant']:<14} time {_fmt(fit['time_exponent'])} / {_fmt(fit['time_exponent_large'])}   "
            f"peak memory {_fmt(fit['memory_exponent'])} / {_fmt(fit['memory_exponent_large'])}"
            + (f"   (skipped n = {fit['skipped_sizes']})" if fit["skipped_sizes"] else "")
        )
    return rows + fits


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.2f}"
