# Sourced by CI (and by hand) before the NVRTC compile test:
#
#     source .ci/nvrtc.sh && cargo test -p llmq-runtime --test nvrtc_compile
#
# Fetches NVRTC and the CUDA runtime headers (cuda_bf16.h, cuda_fp8.h) from PyPI wheels into
# target/nvrtc-cache (git-ignored), and exports what the runtime needs to find them:
#   LD_LIBRARY_PATH      += <cache>/nvidia/cu13/lib   (libnvrtc.so.13, libnvrtc-builtins.so.13.0)
#   LLMQ_CUDA_INCLUDE     = <cache>/nvidia/cu13/include
#   LLMQ_REQUIRE_NVRTC    = 1   (the test fails instead of skipping when NVRTC is missing)
# Pinned to 13.0.x: a newer NVRTC writes PTX whose ISA version the lent GPUs' driver cannot load.
# The wheels ship versioned names only (libnvrtc.so.13, libnvrtc-builtins.so.13.0, libcudart.so.13).
# cudarc's loader (feature cuda-13000) tries libnvrtc.so.13 among its candidates and finds it; the
# script adds unversioned symlinks (libnvrtc.so, ...) too, for loaders that only try those.

_llmq_nvrtc_setup() {
    local root cache lib
    root="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
    cache="$root/target/nvrtc-cache"
    lib="$cache/nvidia/cu13/lib"
    mkdir -p "$cache/wheels" || return 1
    if [ ! -e "$cache/.unpacked-13.0" ]; then
        python3 -m pip download --quiet --no-deps --dest "$cache/wheels" \
            "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-runtime==13.0.*" || return 1
        local whl
        for whl in "$cache"/wheels/*.whl; do
            python3 -m zipfile -e "$whl" "$cache" || return 1
        done
        touch "$cache/.unpacked-13.0"
    fi
    # Unversioned names for cudarc's loader, pointing at whatever .so.N the wheels ship.
    local so base
    for so in "$lib"/lib*.so.*; do
        [ -e "$so" ] || continue
        base="${so##*/}"
        base="${base%%.so.*}.so"
        [ -e "$lib/$base" ] || ln -s "${so##*/}" "$lib/$base"
    done
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LLMQ_CUDA_INCLUDE="$cache/nvidia/cu13/include"
    export LLMQ_REQUIRE_NVRTC=1
}

_llmq_nvrtc_setup || echo "nvrtc.sh: could not set up NVRTC from the PyPI wheels" >&2
unset -f _llmq_nvrtc_setup
