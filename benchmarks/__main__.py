"""``python -m benchmarks``: run the registered entries, print one table each, write ``results.json``.

The exit status is 1 only when some case's outputs disagree with its reference (then the timing
compares different work and the module has a bug); a missed speed target is reported, not failed,
because on a shared machine one slow run is not proof of a regression.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import ENTRIES, load_entry
from benchmarks.timing import machine_info

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the registered benchmark entries, print a table each, write results.json.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke test")
    parser.add_argument("--only", choices=sorted(ENTRIES), action="append", help="run only this entry (repeatable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"results file (default: {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads(N) first (default: torch's own choice)"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device (this torch build: " + torch.__version__ + ")")
    return args


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of the columns every entry shares (case, times, ratio, spread, agreement).

    Entries without a paired spread or a target (a cost table, say) show "-" there.
    """
    header = (
        f"{'case':<44} {'ours ms':>9} {'ref ms':>9} {'ratio':>6} {'paired q25-q75':>14} "
        f"{'max |diff|':>10} {'target':>6}  ok"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        diffs = [d for d in (row.get("output_max_abs_diff"), row.get("weights_max_abs_diff")) if d is not None]
        verdict = "yes" if row["meets_target"] else "NO"
        if not row.get("outputs_agree", True):
            verdict += " (outputs DIFFER)"
        spread = (
            f"{row['paired_ratio_q25']:6.3f}-{row['paired_ratio_q75']:<7.3f}"
            if row.get("paired_ratio_q25") is not None
            else f"{'-':>14}"
        )
        target = f"{row['target']:6.2f}" if row.get("target") is not None else f"{'-':>6}"
        lines.append(
            f"{row['case']:<44} {_ms(row['ours_median_s'])} {_ms(row['reference_median_s'])} "
            f"{row['ratio']:6.3f} {spread} {max(diffs, default=0.0):10.2e} {target}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        # On a shared machine, 1 thread avoids OpenMP barriers waiting for a core another job holds.
        torch.set_num_threads(args.threads)
    names = args.only or list(ENTRIES)
    machine = machine_info(args.device)
    print(
        f"torch {machine['torch']} on {machine['device']}, {machine['cpus_available']} CPUs available, "
        f"{machine['torch_threads']} torch threads, load {machine['load_average']}; "
        f"{'quick' if args.quick else 'full'} mode"
    )
    results: dict[str, Any] = {"machine": machine, "quick": args.quick, "entries": {}}
    all_agree = True
    for name in names:
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        rows = load_entry(name)(quick=args.quick, device=args.device)
        elapsed = time.perf_counter() - start
        print(format_table(rows))
        print(f"({elapsed:.1f} s)")
        results["entries"][name] = {"elapsed_s": elapsed, "rows": rows}
        all_agree &= all(row.get("outputs_agree", True) for row in rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: an interrupted run never leaves a half-written results file.
    partial = args.output.with_name(args.output.name + ".tmp")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(partial, args.output)
    print(f"\nwrote {args.output}")
    if not all_agree:
        print("some outputs differ from their reference: the timings compare different work", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
