#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before a GPU run: fetch the wheels bench/gpu/run_gpu.sh installs
# on the GPU machine, which cannot reach any registry.
#
#   bash bench/gpu/prepare_wheels.sh
#
# onnxruntime-gpu (the CUDA 13 build, matching the GPU image's CUDA 13 libraries; ~256 MB) is
# larger than what one transfer to that machine may carry (64 MiB), so it is split into pieces of
# 55 MB, one folder each: .whl/ort-gpu-1 ... .whl/ort-gpu-N. Carry one folder per call while the
# machine stays warm (pieces already sent stay there), and run the benchmark in the call that
# carries the last one; run_gpu.sh joins and checksums them. .whl/ is excluded from git.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION="${ORT_GPU_VERSION:-1.31.1}"
PYVER="${GPU_PYTHON_VERSION:-3.12}"
PY="${PYTHON:-python3}"

mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$tmp" "onnxruntime-gpu==$VERSION"
# The exact EfficientNet-Lite0 implementation of the pose model (pure Python, a few kB).
"$PY" -m pip download -q --no-deps -d .whl "efficientnet-lite-pytorch==0.1.0"

wheel="$(ls "$tmp"/onnxruntime_gpu-*.whl)"
name="$(basename "$wheel")"
rm -rf .whl/ort-gpu-*
(cd "$tmp" && split -b 55M -d -a 1 --numeric-suffixes=1 "$name" "$name.part-")
count=0
for part in "$tmp/$name".part-*; do
    i="${part##*.part-}"
    mkdir -p ".whl/ort-gpu-$i"
    mv "$part" ".whl/ort-gpu-$i/"
    count=$((count + 1))
done
(cd "$tmp" && sha256sum "$name") > .whl/ort-gpu-1/SHA256SUMS
for ((i = 1; i <= count; i++)); do echo "$name.part-$i"; done > .whl/ort-gpu-1/PARTS

echo "onnxruntime-gpu $VERSION in $count pieces:"
du -sh .whl/ort-gpu-* .whl/*.whl
echo
echo "GPU run: carry .whl/ort-gpu-1 ... .whl/ort-gpu-$((count - 1)) one per call (command: ls .whl),"
echo "then carry .whl/ort-gpu-$count and .whl/$(basename .whl/efficientnet*.whl) with: bash bench/gpu/run_gpu.sh"
