"""Upcast the carried float16 copy of minilm-sentiment (.gpu/minilm16, made by prepare.sh; half the bytes: the
device tool carries at most 64 MiB) to float32 in $ATTN_PROBE_CACHE/models/minilm-sentiment: both sides of the
benchmark then load the same float32 weights (float16-rounded values of the real model)."""

import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

source = Path(sys.argv[1])
target = Path(os.environ["ATTN_PROBE_CACHE"]) / "models" / "minilm-sentiment"
target.mkdir(parents=True, exist_ok=True)
weights = load_file(source / "model.safetensors")
save_file(
    {k: v.to(torch.float32).contiguous() if v.is_floating_point() else v for k, v in weights.items()},
    target / "model.safetensors",
    metadata={"format": "pt"},
)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json"):  # the marker last
    shutil.copy(source / name, target / name)
print("upcast", len(weights), "tensors to", target)
