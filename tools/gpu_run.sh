#!/bin/bash
# Runs on the lent GPU machine, from the bundle tools/gpu_bundle.sh makes (there it is run.sh):
#
#     BUDGET=500 CONFORMANCE=1 PROFILE="3b-fp8" AB="3b-fp8" gpu-bundle/run.sh 1.5b-bf16 7b-fp8 ...
#
# In this order, each under `timeout` and within BUDGET seconds in all (default 540; a
# benchmark that would not finish in what is left is skipped and says so):
#   CONFORMANCE=1   cuda_conformance (the kernels against the CPU backend, ~50 s);
#   AB="plan ..."   each plan with cuda_throughput_previous, then with cuda_throughput, side by
#                   side on this machine (gpu_bundle.sh --keep-previous made the previous one);
#   PROFILE="..."   each plan with LLMQ_BENCH_PROFILE=1 (the per-op profile);
#   arguments       each plan benchmarked.
# Plans are named without `.bin`. Every output goes to a file of $OUT; stdout gets one line a
# run (tok/s, step, setup, the last step's micro-batches) and the test summaries. nvidia-smi
# samples the SM clock, power and throttle reasons twice a second into $OUT/clocks.csv (the H100
# trains at its 700 W cap: docs/benchmarks.md).
cd "$(dirname "$0")"
start=$(date +%s)
budget=${BUDGET:-540}
out=${OUT:-.}
left() { echo $((budget - ($(date +%s) - start))); }
elapsed() { echo $(($(date +%s) - start)); }

if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
        --format=csv,noheader -lms 500 > "$out/clocks.csv" 2>&1 &
    sampler=$!
fi

if [ "${CONFORMANCE:-0}" = 1 ] && [ "$(left)" -lt 60 ]; then
    echo "skipped conformance: $(left) s left"
elif [ "${CONFORMANCE:-0}" = 1 ]; then
    LLMQ_MODELS_DIR=../models timeout "$(left)" ./cuda_conformance --nocapture --test-threads=1 \
        > "$out/conformance.txt" 2>&1
    echo "conformance rc=$? t=$(elapsed)s"
    grep -E "test result|beyond tolerance" "$out/conformance.txt" | head -5
fi

# bench BINARY PLAN PROFILE WHAT: one benchmark, if a 7B's 90 s or another's 40 s are left,
# written to $OUT/WHAT-BINARY-PLAN.txt.
bench() {
    local need=40
    case $2 in 7b*) need=90 ;; esac
    if [ "$(left)" -lt $need ]; then
        echo "skipped $1 $2: $(left) s left"
        return
    fi
    local log="$out/$4-$1-$2.txt"
    LLMQ_BENCH_PROFILE=$3 LLMQ_BENCH_PROFILE_OPS=40 LLMQ_BENCH_PLANS="$2.bin" LLMQ_BENCH_STEPS=2 \
        timeout "$(left)" "./$1" --ignored --nocapture --test-threads=1 > "$log" 2>&1
    echo "$1 $2 rc=$? t=$(elapsed)s: $(grep -oE '[0-9]+ tok/s, step [0-9.]+ ms|setup [0-9.]+ s|first .*' "$log" | tr '\n' ' ')"
    if [ "$3" = 1 ]; then grep "section" "$log"; fi
}

for plan in ${AB:-}; do
    bench cuda_throughput_previous "$plan" 0 ab
    bench cuda_throughput "$plan" 0 ab
done
for plan in ${PROFILE:-}; do bench cuda_throughput "$plan" 1 profile; done
for plan in "$@"; do bench cuda_throughput "$plan" 0 bench; done

if [ -n "${sampler:-}" ]; then kill "$sampler"; fi
