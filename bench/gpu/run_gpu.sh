#!/usr/bin/env bash
# Model-level GPU benchmark, one self-contained step for a fresh GPU machine.
#
#   bash bench/gpu/run_gpu.sh [model_bench.py options]       # from the repository root
#
# Results go to $OUT (default bench/results/gpu): gpu_report.md, gpu_results.json,
# gpu_latency.png and run_gpu.log. Needs python3 with numpy, onnx, onnxruntime, torch and
# transformers (the CUDA image has them). onnxruntime-gpu is installed from wheels carried in
# .whl/ when present:
#   - .whl/efficientnet_lite_pytorch-*.whl  the pose backbone's exact implementation;
#   - .whl/ort-gpu-<i>/*.part-<i>     pieces of the onnxruntime-gpu wheel (made by
#                                     bench/gpu/prepare_wheels.sh: it is larger than one transfer),
#                                     joined and checked against .whl/ort-gpu-1/SHA256SUMS.
# Without onnxruntime-gpu the report still has ONNX Runtime CPU and PyTorch CUDA fp32/fp16, and
# says that the CUDA and TensorRT execution providers were not available.
# Environment: OUT, PYTHON (python3), MTC_WHEEL_DIR (.whl), MTC_GPU_SITE (/tmp/mtc-gpu-site),
# MTC_GPU_PREPARE_ONLY=1 (install and list the providers, measure nothing).
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT="${OUT:-$PWD/bench/results/gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/run_gpu.log") 2>&1
PY="${PYTHON:-python3}"
SITE="${MTC_GPU_SITE:-/tmp/mtc-gpu-site}"
WHL="${MTC_WHEEL_DIR:-.whl}"
WHEELS="$(mktemp -d)"
export PYTHONUNBUFFERED=1

echo "==> $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: no GPU visible"

# 1. Join the onnxruntime-gpu wheel from its pieces, if all of them came along.
shopt -s nullglob
sums=()
[ -f "$WHL/ort-gpu-1/SHA256SUMS" ] && sums=("$WHL/ort-gpu-1/SHA256SUMS")
if ((${#sums[@]})); then
    expected=$(awk '{print $2}' "${sums[0]}")
    count=$(grep -c . "$WHL"/ort-gpu-1/PARTS 2>/dev/null || echo 0)
    missing=()
    for ((i = 1; i <= count; i++)); do
        part=("$WHL"/ort-gpu-"$i"/*.part-"$i")
        ((${#part[@]})) || missing+=("$i")
    done
    if ((${#missing[@]})); then
        echo "warning: onnxruntime-gpu pieces missing: ${missing[*]} of $count; running without it"
    else
        for ((i = 1; i <= count; i++)); do cat "$WHL"/ort-gpu-"$i"/*.part-"$i"; done > "$WHEELS/$expected"
        if (cd "$WHEELS" && sha256sum -c --quiet -) < "${sums[0]}"; then
            echo "==> joined $expected"
        else
            echo "warning: the joined onnxruntime-gpu wheel fails its checksum; running without it"
            rm -f "$WHEELS/$expected"
        fi
    fi
fi
# Only the wheels this benchmark needs (other wheels may sit in .whl/ for other runs).
for wheel in "$WHL"/efficientnet_lite_pytorch-*.whl; do cp "$wheel" "$WHEELS/"; done

# 2. Install the wheels into a private target (nothing outside it changes) and put it first.
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
        && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
        || echo "warning: installing ${wheels[*]} failed"
fi
"$PY" - <<'EOF'
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__)
print("providers", ort.get_available_providers())
EOF

# 3. The benchmark itself (bounded: --total-budget-s, default 240 s).
if [ -n "${MTC_GPU_PREPARE_ONLY:-}" ]; then
    status=0  # wheels joined and installed, providers listed: nothing measured
else
    "$PY" bench/gpu/model_bench.py --out "$OUT" "$@"
    status=$?
fi
rm -rf "$WHEELS"
echo "==> exit $status; results in $OUT"
exit $status
