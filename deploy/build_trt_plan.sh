#!/usr/bin/env bash
# Optional: build a TensorRT plan for one task's latest published ONNX model, on a GPU host.
#
#   deploy/build_trt_plan.sh sentiment [--fp16]
#
# trtexec runs inside NGC's TensorRT container of the SAME release as the Triton image
# (nvcr.io/nvidia/tensorrt:24.10-py3 for tritonserver:24.10-py3, both TensorRT 10.5): a plan only
# loads on the TensorRT version (and GPU architecture) that built it. Published versions are immutable,
# so the plan is published as the NEXT version (the latest version's files + model.plan + model.plan.json,
# with a new manifest.json), and model_repository/<task>/configs/tensorrt.pbtxt is written. Before that the plan
# runs on the task's held-out data (MTC_DATA_DIR) and must reach taskspec.TENSORRT_FLOOR against model.onnx:
# $PYTHON needs the tensorrt package of the same TensorRT version (pip install "tensorrt==10.5.*").
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
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The published version is mounted read-only: the engine goes to a scratch folder, owned by the caller.
# shellcheck disable=SC2086  # $shapes holds three flags
docker run --rm --gpus all --user "$(id -u):$(id -g)" -v "$REPO/$TASK/$version:/model:ro" -v "$out:/out" "$image" \
    trtexec --onnx=/model/model.onnx --saveEngine=/out/model.plan $shapes ${flags[@]+"${flags[@]}"} --skipInference
trt_version=$(docker run --rm "$image" python3 -c 'import tensorrt; print(tensorrt.__version__)')
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
"$PY" - "$out/model.plan.json" "$trt_version" "$gpu" "$RELEASE" "$shapes" "${PRECISION:-fp32}" "$version" <<'PYEOF'
import json, sys
path, trt, gpu, release, shapes, precision, source = sys.argv[1:]
info = {"tensorrt": trt, "gpu": gpu, "ngc_release": release, "shapes": shapes, "precision": precision,
        "built_from_version": int(source)}
with open(path, "w") as handle:
    json.dump(info, handle, indent=2)
PYEOF
published=$("$PY" -m deploy.tensorrt publish-plan "$TASK" --from-version "$REPO/$TASK/$version" \
    --plan "$out/model.plan" --info "$out/model.plan.json")
"$PY" -m deploy.tensorrt config "$TASK" --repository "$REPO"
echo "==> published $published (version $version + model.plan); serve with --model-config-name=tensorrt"
