"""Where our `full` ferret case spends its time on this device: cProfile of one warm call, top 30 by cumulative."""

import cProfile
import pstats
import sys
import time
import warnings

import torch

from attn_probe import Probe
from benchmarks.peers.ferret_peer import FULL_METHODS, sentences

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
texts = sentences(False, device)
probe = Probe.load("minilm-sentiment", device=device)
warnings.simplefilter("ignore")
for checks in (["agreement", "erasure"], ["agreement", "erasure", "flips"]):
    probe.explain(texts, methods=FULL_METHODS, checks=checks)  # warm
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    profiler = cProfile.Profile()
    profiler.enable()
    probe.explain(texts, methods=FULL_METHODS, checks=checks)
    if device == "cuda":
        torch.cuda.synchronize()
    profiler.disable()
    print(f"== checks {checks}: {time.perf_counter() - start:.3f} s for {len(texts)} texts on {device}")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
