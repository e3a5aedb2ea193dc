#!/usr/bin/env bash
# One device call: the ferret benchmark on CUDA, the CUDA tests, a profile of our side. Logs and results in $OUT.
cd "$(dirname "$0")/../.." || exit 2  # the repository root
OUT="${OUT:-.gpu/out}"
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/device.txt"
timeout 300 bash benchmarks/offline_gpu/run_ferret.sh "$@"; echo "run_ferret exit $?" | tee -a "$OUT/device.txt"
export PYTHONPATH="$PWD:/tmp/ap_site" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ATTN_PROBE_CACHE="$PWD/.gpu/cache"
timeout 150 python3 -m pytest -p no:cacheprovider -q tests/test_cuda.py tests/attention/test_devices.py \
    tests/capture/test_capture_devices.py 2>&1 | tail -40 > "$OUT/cuda_tests.log"; echo "tests exit $?" >> "$OUT/device.txt"
timeout 60 python3 benchmarks/offline_gpu/profile_full.py cuda > "$OUT/profile_cuda.txt" 2>&1; echo "profile exit $?" >> "$OUT/device.txt"
timeout 100 python3 -m benchmarks --only captum_loop --device cuda --output "$OUT/captum_gpu.json" > "$OUT/captum_gpu.log" 2>&1
echo "captum_loop exit $?" >> "$OUT/device.txt"; tail -12 "$OUT/captum_gpu.log"
cat "$OUT/device.txt"; tail -5 "$OUT/cuda_tests.log"; grep "^==" "$OUT/profile_cuda.txt"
