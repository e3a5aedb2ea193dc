"""Entry ``memory``: does a dataset run's peak memory stay flat as the dataset grows?

``Probe.run`` writes every batch to disk as it goes, so its peak resident memory should not depend on how many
examples it has done: whatever it keeps per example (tables, warnings, flags, progress state) shows up as growth.
Each size runs in a fresh subprocess (``python -m benchmarks.memory --child N OUT``) that builds the model,
reads ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the peak so far) before the run and again at its end, and
prints them; the parent compares the two sizes.

Row ``peak_rss/<big>-vs-<small>``: ``ratio`` = peak RSS of the big run / peak RSS of the small run; target: <= 1.15.
``ours_median_s`` / ``reference_median_s`` are the two runs' wall seconds (one run each, not medians), so the
table's "ours ms" / "ref ms" columns are run times; the RSS values are in ``ours_peak_rss_mb`` /
``reference_peak_rss_mb``, and ``*_growth_mb`` is each run's peak minus the peak before it started (imports and
model included in the latter).

Setup, chosen so that 5,000 examples take a few minutes on 2 shared cores: a tiny random BERT (2 layers, 4 heads,
hidden 32, all-MiniLM's tokenizer), short synthetic reviews (~12 tokens, all different), ``batch_size=32``,
methods ``raw_attention``, ``attention_rollout``, ``saliency`` and checks ``agreement``, ``sinks``, ``position``
(every table a run writes is there: examples, scores, findings, attention summaries, flags, the comparisons, and
the sampled attention matrices). Sizes 500 and 5,000; ``--quick``: 50 and 500.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RSS_TARGET = 1.15
METHODS = ["raw_attention", "attention_rollout", "saliency"]
CHECKS = ["agreement", "sinks", "position"]
BATCH_SIZE = 32
ADJECTIVES = ["witty", "dull", "gorgeous", "tedious", "charming", "flat", "moving", "bland", "smart", "clumsy"]
NOUNS = ["film", "plot", "cast", "story", "script", "score", "ending"]
ROOT = Path(__file__).resolve().parent.parent


def synthetic_texts(count: int) -> list[str]:
    """``count`` short, distinct review-like texts (the run's data fingerprint needs no duplicates to be fair)."""
    a, n = ADJECTIVES, NOUNS
    return [
        f"a {a[i % 10]} {n[i % 7]}, {a[(i // 10) % 10]} and {a[(i // 100) % 10]} (review {i})" for i in range(count)
    ]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def _current_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:  # no /proc (not Linux): the current size is unknown, the peak still comes from getrusage
        return None
    return None


def child(count: int, out: str, threads: int, device: str) -> dict[str, Any]:
    """One measured run, in this (fresh) process."""
    import warnings

    import torch

    from attn_probe import Probe
    from benchmarks.tiny import NAME, tiny_random_bert

    torch.set_num_threads(threads)
    model, tokenizer = tiny_random_bert(device)
    probe = Probe(model, tokenizer, name=NAME)
    texts = synthetic_texts(count)
    before = _peak_mb()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = probe.run(texts, out=out, methods=METHODS, checks=CHECKS, batch_size=BATCH_SIZE, progress=False)
    seconds = time.perf_counter() - start
    return {
        "examples": count,
        "peak_rss_before_run_mb": before,
        "peak_rss_mb": _peak_mb(),
        "rss_at_end_mb": _current_mb(),
        "seconds": seconds,
        "written": len(run.done()),
    }


def measure(count: int, threads: int, device: str) -> dict[str, Any]:
    """:func:`child` in a fresh interpreter; its run directory is removed afterwards."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="attn-probe-memory-") as folder:
        command = [sys.executable, "-m", "benchmarks.memory", "--child", str(count), str(Path(folder) / "run")]
        command += ["--threads", str(threads), "--device", device]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory child for {count} examples failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool, device: str, *, sizes: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    import torch

    small, big = sizes if sizes is not None else ((50, 500) if quick else (500, 5000))
    threads = torch.get_num_threads()
    measured = {count: measure(count, threads, device) for count in (small, big)}
    s, b = measured[small], measured[big]
    ratio = b["peak_rss_mb"] / s["peak_rss_mb"]
    return [
        {
            "case": f"peak_rss/{big}-vs-{small}",
            "ours_median_s": b["seconds"],
            "reference_median_s": s["seconds"],
            "ratio": ratio,
            "ratio_of": "peak RSS (ru_maxrss), big run / small run",
            "target": RSS_TARGET,
            "meets_target": ratio <= RSS_TARGET,
            "outputs_agree": b["written"] == big and s["written"] == small,
            "ours_peak_rss_mb": b["peak_rss_mb"],
            "reference_peak_rss_mb": s["peak_rss_mb"],
            "ours_growth_mb": b["peak_rss_mb"] - b["peak_rss_before_run_mb"],
            "reference_growth_mb": s["peak_rss_mb"] - s["peak_rss_before_run_mb"],
            "peak_rss_before_run_mb": b["peak_rss_before_run_mb"],
            "ours_rss_at_end_mb": b["rss_at_end_mb"],
            "reference_rss_at_end_mb": s["rss_at_end_mb"],
            "ours_examples": big,
            "reference_examples": small,
            "ours_per_example_s": b["seconds"] / big,
            "reference_per_example_s": s["seconds"] / small,
            "methods": METHODS,
            "checks": CHECKS,
            "batch_size": BATCH_SIZE,
            "torch_threads": threads,
        }
    ]


def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("N", "OUT"), required=True, help="one measured run (internal)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(json.dumps(child(int(args.child[0]), args.child[1], args.threads, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
