"""Entry ``ray_engine``: examples per second of a dataset run with the local engine and with 1 and 2 Ray
workers, side by side in one run, on the same model, texts and settings; the runs' tables must be equal.

What it shows: what sharding costs (Ray start-up, one model load per worker, results through the object store)
and what it buys on this machine. On a 2-core machine two single-threaded workers compete with the local
engine's two threads for the same cores, so the gain is small here; on a cluster each worker has its own node.
Each ray row's ``ratio`` is its seconds over the local engine's (below 1: faster); ``startup_s`` is the time
to the first batch (Ray and the workers' model loads), which the throughput excludes.

Model: ``minilm-sentiment`` on 48 Rotten Tomatoes snippets (raw attention, rollout, integrated gradients,
leave-one-out); ``--quick``: a tiny random BERT on 12 short texts.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

METHODS = ["raw_attention", "attention_rollout", "integrated_gradients", "leave_one_out"]


def _probe_and_texts(quick: bool) -> tuple[Any, list[str], str]:
    from attn_probe import Probe

    if quick:
        from benchmarks.tiny import NAME, tiny_random_bert

        model, tokenizer = tiny_random_bert()
        probe = Probe(model, tokenizer, name=NAME)
        return probe, [f"text {i}: a {'witty' if i % 2 else 'dull'} film" for i in range(12)], probe.name
    from attn_probe.data.rotten_tomatoes import load_rotten_tomatoes

    snippets = load_rotten_tomatoes()
    texts = [str(t) for t in snippets.loc[snippets["split"] == "test", "text"].head(48)]
    return Probe.load("minilm-sentiment"), texts, "minilm-sentiment"


def _timed_run(probe: Any, texts: list[str], out: Path, **engine: Any) -> tuple[float, float, Any]:
    """(seconds to the first batch, seconds of the rest, the run): the first batch pays the start-up."""
    marks: list[float] = []
    real = probe.explain_shard

    start = time.perf_counter()
    if engine.get("engine") == "ray":
        from attn_probe.engines import ray_engine

        original = ray_engine.run_shards_on_ray

        def marking(*args: Any, **kwargs: Any):
            for result in original(*args, **kwargs):
                marks.append(time.perf_counter())
                yield result

        ray_engine.run_shards_on_ray = marking
        try:
            run = probe.run(texts, out, methods=METHODS, batch_size=4, progress=False, **engine)
        finally:
            ray_engine.run_shards_on_ray = original
    else:

        def marking_local(part: pd.DataFrame, plan: Any) -> Any:
            result = real(part, plan)
            marks.append(time.perf_counter())
            return result

        probe.explain_shard = marking_local
        try:
            run = probe.run(texts, out, methods=METHODS, batch_size=4, progress=False)
        finally:
            del probe.explain_shard
    end = time.perf_counter()
    return marks[0] - start, end - marks[0], run


def _same_tables(run: Any, reference: Any) -> bool:
    try:
        for name in reference.tables():
            # float32 noise only: workers run 1 thread, the local engine torch's default, so sums differ in order
            pd.testing.assert_frame_equal(run.table(name), reference.table(name), rtol=1e-4, atol=1e-5)
    except AssertionError:
        return False
    return run.tables() == reference.tables()


def run(quick: bool, device: str) -> list[dict[str, Any]]:
    import ray

    if device != "cpu":
        raise ValueError("the ray_engine entry measures CPU workers; run it with --device cpu")
    probe, texts, name = _probe_and_texts(quick)
    batches = len(texts) // 4
    folder = Path(tempfile.mkdtemp(prefix="attn_probe_ray_bench_"))
    rows = []
    try:
        local_start, local_rest, local = _timed_run(probe, texts, folder / "local")
        local_rate = (len(texts) - 4) / local_rest
        rows.append(_row(name, "local engine", len(texts), local_start, local_rest, local_rate, local_rest, True))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for workers in (1, 2):
                start, rest, run_ = _timed_run(probe, texts, folder / f"ray{workers}", engine="ray", workers=workers)
                rate = (len(texts) - 4) / rest
                same = _same_tables(run_, local)
                rows.append(_row(name, f"ray, {workers} worker(s)", len(texts), start, rest, rate, local_rest, same))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for row in rows:
        row["batches"] = batches
    return rows


def _row(name: str, engine: str, n: int, start: float, rest: float, rate: float, local_rest: float, same: bool):
    return {
        "case": f"{engine}: {name}, {n} texts, batches of 4, {', '.join(METHODS)}",
        "engine": engine,
        "startup_s": start,
        "ours_median_s": rest,
        "reference_median_s": local_rest,
        "ratio": rest / local_rest,
        "examples_per_s": rate,
        "outputs_agree": same,
        "target": None,
        "meets_target": True,
    }
