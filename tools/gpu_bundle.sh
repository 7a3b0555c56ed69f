#!/bin/bash
# Builds everything a lent GPU machine runs into gpu-bundle/ (git-ignored), to be carried there:
# the device machine builds nothing (docs/cuda.md, "Running them on the lent GPU").
#
#     tools/gpu_bundle.sh [--keep-previous] [MODEL:PRECISION ...]
#
# Puts in gpu-bundle/: llmqc, llmq-run, the GPU test binaries (cuda_conformance, cuda_throughput,
# cuda_attention) under those names, tools/gpu_run.sh as run.sh, and a plan per MODEL:PRECISION
# (models/qwen2.5-MODEL.ron in LLMQ's published state for the H100: --vram 80G, global batch
# 512 × 1024, --master none --moments bf16), named MODEL-PRECISION.bin; with no pairs, the eight
# of the issue (0.5b 1.5b 3b 7b, fp8 and bf16). --keep-previous keeps the bundle's earlier
# cuda_throughput as cuda_throughput_previous, for run.sh's side-by-side runs (AB=...).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bundle=gpu-bundle
keep_previous=0
if [ "${1:-}" = --keep-previous ]; then
    keep_previous=1
    shift
fi
pairs=("$@")
if [ ${#pairs[@]} -eq 0 ]; then
    pairs=(0.5b:fp8 0.5b:bf16 1.5b:fp8 1.5b:bf16 3b:fp8 3b:bf16 7b:fp8 7b:bf16)
fi

cargo build --release --bins
mkdir -p "$bundle"
if [ $keep_previous = 1 ]; then
    [ -f "$bundle/cuda_throughput" ] || { echo "no earlier $bundle/cuda_throughput to keep" >&2; exit 1; }
    mv "$bundle/cuda_throughput" "$bundle/cuda_throughput_previous"
fi
# The test binaries' paths, from cargo's own report of what it built.
cargo test --release --no-run -p llmq-runtime --test cuda_conformance --test cuda_throughput \
    --test cuda_attention --message-format=json |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4 |
    while read -r path; do
        name=$(basename "$path")
        cp "$path" "$bundle/${name%-*}"
    done
cp target/release/llmqc target/release/llmq-run "$bundle/"
cp tools/gpu_run.sh "$bundle/run.sh"
for pair in "${pairs[@]}"; do
    model=${pair%%:*}
    precision=${pair##*:}
    target/release/llmqc plan "models/qwen2.5-$model.ron" --vram 80G --device h100 --batch auto \
        --global-batch 512 --seq 1024 --precision "$precision" --master none --moments bf16 \
        -o "$bundle/$model-$precision.bin" 2>&1 | tail -1
done
du -sh "$bundle"
echo "carry $bundle; on the device: BUDGET=500 $bundle/run.sh ... (see tools/gpu_run.sh)"
