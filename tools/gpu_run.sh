#!/bin/bash
# Runs on the lent GPU machine, from the bundle tools/gpu_bundle.sh makes (there it is run.sh):
#
#     BUDGET=500 CONFORMANCE=1 PROFILE="3b-fp8" AB="3b-fp8" gpu-bundle/run.sh 1.5b-bf16 7b-fp8 ...
#
# In this order, each under `timeout` and within BUDGET seconds in all (default 540; a
# benchmark that would not finish in what is left is skipped and says so):
#   CONFORMANCE=1   cuda_conformance (the kernels against the CPU backend, ~50 s);
#   AB="plan ..."   each plan with cuda_throughput_previous and cuda_throughput side by side on
#                   this machine, in the order previous, new, new, previous (a drift of the
#                   card's clock over the call then weighs on both alike; gpu_bundle.sh
#                   --previous made the previous one);
#   PROFILE="..."   each plan with LLMQ_BENCH_PROFILE=1 (the per-op profile);
#   arguments       each plan benchmarked.
# Plans are named without `.bin`. Every output goes to a file, and at the end all of them into
# $OUT/logs.tar.gz (the device tool brings back at most eight files); stdout gets one line a
# run (tok/s, step, setup, the last step's micro-batches) and the test summaries. nvidia-smi
# samples the SM clock, power and throttle reasons twice a second into clocks.csv (the H100
# trains at its 700 W cap: docs/benchmarks.md).
cd "$(dirname "$0")"
start=$(date +%s)
budget=${BUDGET:-540}
out=$(mktemp -d)
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

# clock_samples: how many samples clocks.csv holds; clocks_since N: the median SM clock and
# power of the samples after the Nth (those of the run that just ended) drawing over 300 W,
# so the set-up's idle samples stay out.
clock_samples() { cat "$out/clocks.csv" 2> /dev/null | wc -l; }
clocks_since() {
    [ -f "$out/clocks.csv" ] || return 0
    local busy
    busy=$(tail -n +$(($1 + 1)) "$out/clocks.csv" | awk -F', ' '$3 + 0 > 300 { print $2 + 0, $3 + 0 }')
    [ -n "$busy" ] || return 0
    local n median_clock median_power
    n=$(echo "$busy" | wc -l)
    median_clock=$(echo "$busy" | cut -d' ' -f1 | sort -n | sed -n "$(((n + 1) / 2))p")
    median_power=$(echo "$busy" | cut -d' ' -f2 | sort -n | sed -n "$(((n + 1) / 2))p")
    echo " [SM clock median $median_clock MHz, power median $median_power W, $n samples]"
}

# bench BINARY PLAN PROFILE WHAT: one benchmark, if a 7B's 90 s or another's 40 s are left,
# written to WHAT-BINARY-PLAN.txt.
bench() {
    local need=40
    case $2 in 7b*) need=90 ;; esac
    if [ "$(left)" -lt $need ]; then
        echo "skipped $1 $2: $(left) s left"
        return
    fi
    local log="$out/$4-$1-$2.txt"
    local from=$(clock_samples)
    LLMQ_BENCH_PROFILE=$3 LLMQ_BENCH_PROFILE_OPS=40 LLMQ_BENCH_PLANS="$2.bin" LLMQ_BENCH_STEPS=2 \
        timeout "$(left)" "./$1" --ignored --nocapture --test-threads=1 > "$log" 2>&1
    echo "$1 $2 rc=$? t=$(elapsed)s: $(grep -oE '[0-9]+ tok/s, step [0-9.]+ ms|setup [0-9.]+ s|first .*' "$log" | tr '\n' ' ')$(clocks_since "$from")"
    if [ "$3" = 1 ]; then grep "section" "$log"; fi
}

for plan in ${AB:-}; do
    bench cuda_throughput_previous "$plan" 0 ab1
    bench cuda_throughput "$plan" 0 ab1
    bench cuda_throughput "$plan" 0 ab2
    bench cuda_throughput_previous "$plan" 0 ab2
done
for plan in ${PROFILE:-}; do bench cuda_throughput "$plan" 1 profile; done
for plan in "$@"; do bench cuda_throughput "$plan" 0 bench; done

if [ -n "${sampler:-}" ]; then kill "$sampler"; fi
tar -czf "${OUT:-.}/logs.tar.gz" -C "$out" .
