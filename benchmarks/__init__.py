"""Benchmarks for attn_probe: how much our own modules cost compared with plain PyTorch baselines.

Run them with ``python -m benchmarks`` (or ``make bench``); see ``benchmarks/README.md``.

Every entry is a module with a ``run(quick: bool, device: str) -> list[dict]`` function that returns
one flat, JSON-serialisable row per case. :data:`ENTRIES` is the one place where entries are
registered: the runner, the results file and the smoke test all go through it, so a new entry is a new
module plus one line here.

Entries are imported lazily (by module path), so ``--only NAME`` never pays for importing the others
and a broken entry does not stop the rest from being listed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

#: name -> module path; the module must define ``run(quick: bool, device: str) -> list[dict]``.
ENTRIES: dict[str, str] = {
    "attention_speed": "benchmarks.attention_speed",
    "attention_flow": "benchmarks.attention_flow",
    "method_cost": "benchmarks.method_cost",
    "ray_engine": "benchmarks.ray_engine",
    "efficient_attention": "benchmarks.efficient_attention",
    "inseq": "benchmarks.peers.inseq_peer",
    "transformer_lens": "benchmarks.peers.transformerlens_peer",
    "ferret": "benchmarks.peers.ferret_peer",
    "captum_loop": "benchmarks.captum_loop",
    "memory": "benchmarks.memory",
}

RunFn = Callable[..., list[dict[str, Any]]]


def load_entry(name: str) -> RunFn:
    """The ``run`` function of a registered entry; the error names the entries that exist."""
    if name not in ENTRIES:
        raise KeyError(f"no benchmark entry named {name!r}; registered: {sorted(ENTRIES)}")
    module = importlib.import_module(ENTRIES[name])
    return module.run
