#!/usr/bin/env bash
# The ferret benchmark entry on the GPU machine (no network): install the wheels carried in .gpu/ (made here by
# prepare.sh) into two --target folders, point the entry at ferret's prepared interpreter, run it. From the
# repository root:
#     bash benchmarks/offline_gpu/run_ferret.sh                 # --device cuda: writes $OUT/results_gpu.json
#     DEVICE=cpu bash benchmarks/offline_gpu/run_ferret.sh --quick   # extra arguments go to `python -m benchmarks`
# Variables (defaults): PYTHON (python3), OUT (.gpu/out), DEVICE (cuda), OURS_SITE (/tmp/ap_site),
# FERRET_SITE (/tmp/ferret_site), ATTN_PROBE_CACHE (.gpu/cache: models/minilm-sentiment/ and
# data/rotten_tomatoes/rotten_tomatoes_v1.parquet must be there: nothing can be fetched or trained there).
set -euo pipefail
ROOT="$PWD"
GPU="$ROOT/.gpu"  # what prepare.sh made: wheels, the float16 model, the texts
KIT="$ROOT/benchmarks/offline_gpu"
[ -f "$ROOT/benchmarks/peers/ferret_peer.py" ] && [ -d "$GPU/whl" ] || { echo "run it from the repository root" >&2; exit 2; }
PYTHON="$(command -v "${PYTHON:-python3}")" || { echo "no interpreter ${PYTHON:-python3}" >&2; exit 2; }
export PYTHON  # absolute: ferret-python execs the same one, whatever the worker's PATH
export FERRET_SITE="${FERRET_SITE:-/tmp/ferret_site}"
OURS_SITE="${OURS_SITE:-/tmp/ap_site}"
OUT="${OUT:-$GPU/out}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"

main() {
echo "== $(date -u +%FT%TZ) run_ferret.sh: PYTHON=$PYTHON DEVICE=$DEVICE OUT=$OUT args: $*"

install() {  # install() FOLDER WHEEL...: no index, no dependencies: every wheel is named
    local target="$1"
    shift
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}
install "$OURS_SITE" "$GPU"/whl/ours/*.whl      # captum 0.9.0, vaderSentiment 3.3.2 (attn_probe's missing deps)
install "$FERRET_SITE" "$GPU"/whl/ferret/*.whl  # ferret-xai 0.4.2, captum 0.7.0 (ferret's pin)

export ATTN_PROBE_CACHE="${ATTN_PROBE_CACHE:-$GPU/cache}"
[ -d "$GPU/minilm16" ] && PYTHONPATH="$OURS_SITE" "$PYTHON" "$KIT/upcast_model.py" "$GPU/minilm16"
missing=0
for need in models/minilm-sentiment/metrics.json models/minilm-sentiment/config.json \
    data/rotten_tomatoes/rotten_tomatoes_v1.parquet; do
    [ -f "$ATTN_PROBE_CACHE/$need" ] || { echo "missing: \$ATTN_PROBE_CACHE/$need ($ATTN_PROBE_CACHE)" >&2; missing=1; }
done
ls "$ATTN_PROBE_CACHE"/models/minilm-sentiment/*.safetensors >/dev/null 2>&1 \
    || { echo "missing: the weights (*.safetensors) in $ATTN_PROBE_CACHE/models/minilm-sentiment" >&2; missing=1; }
[ "$missing" = 0 ] || exit 3

chmod +x "$KIT/ferret-python"  # in case the copy lost the bit
export ATTN_PROBE_PEER_PYTHON_FERRET="$KIT/ferret-python"  # ferret's side: this interpreter, no venv built
export ATTN_PROBE_PEER_INSTALL=0                           # and never try to build one (no network)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT:$OURS_SITE"                        # our side: attn_probe from the tree, then captum 0.9

echo "-- our side"
"$PYTHON" -c '
import importlib.metadata as m, platform, torch
import attn_probe, captum, transformers, numpy
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("attn_probe", attn_probe.__file__, "captum", captum.__version__, "transformers", transformers.__version__,
      "numpy", numpy.__version__)
'
echo "-- ferret's side"
"$ATTN_PROBE_PEER_PYTHON_FERRET" -c '
import importlib.metadata as m
print({n: m.version(n) for n in ("ferret-xai", "captum", "transformers", "numpy", "torch")})
' 2>&1

echo "-- python -m benchmarks --only ferret --device $DEVICE $*"
"$PYTHON" -m benchmarks --only ferret --device "$DEVICE" --output "$OUT/results_gpu.json" "$@"
}

# the whole output also in $OUT/run_ferret.log; the exit status is main's
main "$@" 2>&1 | tee -a "$OUT/run_ferret.log"
exit "${PIPESTATUS[0]}"
