#!/bin/bash
# Builds everything a lent GPU machine runs into gpu-bundle/ (git-ignored), to be carried there:
# the device machine builds nothing (docs/cuda.md, "Running them on the lent GPU").
#
#     tools/gpu_bundle.sh [--previous REV] [MODEL:PRECISION ...]
#
# Puts in gpu-bundle/: llmqc, llmq-run, the GPU test binaries (cuda_conformance, cuda_throughput,
# cuda_attention) under those names, tools/gpu_run.sh as run.sh, and a plan per MODEL:PRECISION
# (models/qwen2.5-MODEL.ron in LLMQ's published state for the H100: --vram 80G, global batch
# 512 × 1024, --master none --moments bf16), named MODEL-PRECISION.bin; with no pairs, the eight
# of the issue (0.5b 1.5b 3b 7b, fp8 and bf16). --previous REV adds cuda_throughput as of commit
# REV, built in a git worktree (target/gpu-previous) with the same target folder, as
# cuda_throughput_previous, for run.sh's side-by-side runs (AB=...).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bundle=gpu-bundle
previous=
if [ "${1:-}" = --previous ]; then
    previous=$2
    shift 2
fi
pairs=("$@")
if [ ${#pairs[@]} -eq 0 ]; then
    pairs=(0.5b:fp8 0.5b:bf16 1.5b:fp8 1.5b:bf16 3b:fp8 3b:bf16 7b:fp8 7b:bf16)
fi

mkdir -p "$bundle"
# copy_tests SUFFIX CARGO-TEST-ARGS...: builds test binaries and copies each into the bundle
# under its name (cargo's hash dropped) and SUFFIX, from cargo's own report of what it built.
copy_tests() {
    local suffix=$1
    shift
    cargo test --release --no-run -p llmq-runtime "$@" --message-format=json |
        grep -o '"executable":"[^"]*"' | cut -d'"' -f4 |
        while read -r path; do
            name=$(basename "$path")
            cp "$path" "$bundle/${name%-*}$suffix"
        done
}
# The previous build first: it shares the target folder (and its dependencies' builds), and
# the current build after it leaves that folder as the checkout is.
if [ -n "$previous" ]; then
    root=$(pwd)
    rm -f "$bundle/cuda_throughput_previous"
    git worktree remove --force target/gpu-previous 2> /dev/null || true
    git worktree add --detach target/gpu-previous "$previous"
    (cd target/gpu-previous && CARGO_TARGET_DIR="$root/target" bundle="$root/$bundle" \
        copy_tests _previous --test cuda_throughput)
    git worktree remove --force target/gpu-previous
    [ -f "$bundle/cuda_throughput_previous" ] || { echo "$previous: no cuda_throughput" >&2; exit 1; }
fi
cargo build --release --bins
copy_tests "" --test cuda_conformance --test cuda_throughput --test cuda_attention
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
