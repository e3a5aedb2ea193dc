#!/usr/bin/env bash
# Make .gpu/ here, where PyPI is reachable, for a GPU machine that reaches nothing (the lent H100 / H200: Python
# 3.12, its own torch + CUDA, transformers 5, numpy 2; no captum, no ferret). From the repository root:
#     bash benchmarks/offline_gpu/prepare.sh
# .gpu/ (git-ignored) then holds, ~50 MB in all (the device tool carries at most 64 MiB with the tree):
#   whl/ours/    captum 0.9.0, vaderSentiment 3.3.2: attn_probe's dependencies missing there (wheels for cp312)
#   whl/ferret/  ferret-xai 0.4.2 and captum 0.7.0 (its pin), installed there with --no-deps beside transformers 5
#   minilm16/    minilm-sentiment with float16 weights (half the bytes); run_ferret.sh upcasts them to float32
#   cache/data/rotten_tomatoes/rotten_tomatoes_v1.parquet   the benchmark's texts
set -euo pipefail
ROOT="$PWD"
[ -f "$ROOT/benchmarks/peers/ferret_peer.py" ] || { echo "run it from the repository root" >&2; exit 2; }
PY="${PYTHON:-$ROOT/.venv/bin/python}"
GPU="$ROOT/.gpu"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

download() {  # download FOLDER REQUIREMENT...: wheels for CPython 3.12 on x86-64 Linux, no dependencies
    local folder="$1"
    shift
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$folder" "$@"
}
download "$GPU/whl/ours" captum==0.9.0 vaderSentiment==3.3.2
download "$GPU/whl/ferret" ferret-xai==0.4.2 captum==0.7.0

"$PY" - "$GPU" <<'PYTHON'
"""minilm-sentiment (built here if needed) as float16, and the Rotten Tomatoes table the texts come from."""
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from attn_probe.data.rotten_tomatoes import load_rotten_tomatoes
from attn_probe.models.cache import cache_root
from attn_probe.models.offline import offline_model_path

gpu = Path(sys.argv[1])
source = offline_model_path("minilm-sentiment")
target = gpu / "minilm16"
target.mkdir(parents=True, exist_ok=True)
weights = load_file(source / "model.safetensors")
save_file({k: v.half().contiguous() if v.is_floating_point() else v for k, v in weights.items()},
          target / "model.safetensors", metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json"):
    shutil.copy(source / name, target / name)
load_rotten_tomatoes(progress=False)
table = cache_root() / "data" / "rotten_tomatoes" / "rotten_tomatoes_v1.parquet"
(gpu / "cache" / "data" / "rotten_tomatoes").mkdir(parents=True, exist_ok=True)
shutil.copy(table, gpu / "cache" / "data" / "rotten_tomatoes" / table.name)
print(f"{gpu}: {sum(p.stat().st_size for p in gpu.rglob('*') if p.is_file()) / 2**20:.1f} MiB")
PYTHON
