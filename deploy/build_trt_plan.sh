#!/usr/bin/env bash
# Optional: build a TensorRT plan for one task's latest published ONNX model, on a GPU host.
#
#   deploy/build_trt_plan.sh sentiment [--fp16]
#
# trtexec runs inside NGC's TensorRT container of the SAME release as the Triton image
# (nvcr.io/nvidia/tensorrt:24.10-py3 for tritonserver:24.10-py3, both TensorRT 10.5): a plan only
# loads on the TensorRT version (and GPU architecture) that built it. Outputs, next to the ONNX model:
#   model_repository/<task>/<version>/model.plan (+ model.plan.json) and
#   model_repository/<task>/configs/tensorrt.pbtxt.
# Serve them by adding --model-config-name=tensorrt to Triton's command (GPU hosts only), then
# publish with `python -m export push` as usual. See docs/deployment.md, "TensorRT".
set -euo pipefail
cd "$(dirname "$0")/.."
TASK="${1:?usage: deploy/build_trt_plan.sh <task> [--fp16]}"
PRECISION="${2:-}"
RELEASE="${MTC_NGC_RELEASE:-24.10}"
PY="${PYTHON:-.venv/bin/python}"
REPO="$PWD/model_repository"

version=$(ls "$REPO/$TASK" | grep -E '^[0-9]+$' | sort -n | tail -1)
[ -f "$REPO/$TASK/$version/model.onnx" ] || { echo "no model.onnx in $REPO/$TASK/$version" >&2; exit 1; }
shapes=$("$PY" -m deploy.tensorrt shapes "$TASK")
flags=()
if [ "$PRECISION" = "--fp16" ]; then flags+=(--fp16); fi

echo "==> trtexec in nvcr.io/nvidia/tensorrt:${RELEASE}-py3 for $TASK version $version ($shapes ${PRECISION:-fp32})"
image="nvcr.io/nvidia/tensorrt:${RELEASE}-py3"
# shellcheck disable=SC2086  # $shapes holds three flags
docker run --rm --gpus all -v "$REPO/$TASK/$version:/work" "$image" \
    trtexec --onnx=/work/model.onnx --saveEngine=/work/model.plan $shapes ${flags[@]+"${flags[@]}"} --skipInference
trt_version=$(docker run --rm "$image" python3 -c 'import tensorrt; print(tensorrt.__version__)')
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
"$PY" - "$REPO/$TASK/$version/model.plan.json" "$trt_version" "$gpu" "$RELEASE" "$shapes" "${PRECISION:-fp32}" <<'PYEOF'
import json, sys
path, trt, gpu, release, shapes, precision = sys.argv[1:]
info = {"tensorrt": trt, "gpu": gpu, "ngc_release": release, "shapes": shapes, "precision": precision}
with open(path, "w") as handle:
    json.dump(info, handle, indent=2)
PYEOF
"$PY" -m deploy.tensorrt config "$TASK" --repository "$REPO"
echo "==> built $REPO/$TASK/$version/model.plan; serve with --model-config-name=tensorrt"
