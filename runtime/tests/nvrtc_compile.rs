//! Compiles every kernel source of `kernels/cuda/` with NVRTC for `sm_90` and checks that each
//! expected `extern "C"` kernel is in the PTX, and no other.
//!
//! Needs NVRTC and the CUDA headers: `source .ci/nvrtc.sh` fetches both. Without NVRTC the test
//! prints SKIP and passes, unless `LLMQ_REQUIRE_NVRTC=1`, when it fails. With `LLMQ_PTX_DIR`
//! set it writes each program's PTX there, for `ptxas -v` (registers, spills) without a GPU:
//! docs/cuda.md says how.

use llmq_runtime::backend::cuda::nvrtc;

/// Every program and the kernels it must define (the launchers rely on these names).
const KERNELS: &[(&str, &[&str])] = &[
    ("abs_max.cu", &["abs_max_f32", "abs_max_bf16"]),
    (
        "adamw.cu",
        &[
            "adamw_f32_f32_f32",
            "adamw_bf16_bf16_f32",
            "adamw_bf16_bf16_bf16",
            "adamw_f32_bf16_f32",
            "adamw_f32_bf16_bf16",
            "adamw_f32_bf16_bf16_sr",
            "adamw_bf16_bf16_bf16_sr",
            "adamw_bf16_bf16_f32_sr",
        ],
    ),
    ("add.cu", &["add_f32", "add_bf16"]),
    (
        "add_rms_norm.cu",
        &[
            "add_rms_norm_f32",
            "add_rms_norm_bf16",
            "add_rms_norm_abs_max_f32",
            "add_rms_norm_abs_max_bf16",
        ],
    ),
    (
        "attention.cu",
        &[
            "attention_f32",
            "attention_bf16",
            "attention_backward_f32",
            "attention_backward_bf16",
        ],
    ),
    (
        "attention_mma.cu",
        &[
            "attention_bf16_d64",
            "attention_backward_bf16_d64",
            "attention_bf16_d128",
            "attention_backward_bf16_d128",
            "attention_backward_stats_bf16",
        ],
    ),
    (
        "bias_add.cu",
        &[
            "bias_add_f32",
            "bias_add_bf16",
            "bias_backward_f32",
            "bias_backward_bf16",
        ],
    ),
    (
        "cast.cu",
        &[
            "cast_f32_bf16",
            "cast_bf16_f32",
            "cast_f32_e4m3",
            "cast_f32_e5m2",
            "cast_bf16_e4m3",
            "cast_bf16_e5m2",
            "cast_e4m3_f32",
            "cast_e4m3_bf16",
            "cast_e5m2_f32",
            "cast_e5m2_bf16",
            "cast_stochastic_f32_bf16",
        ],
    ),
    (
        "classifier_cross_entropy.cu",
        &[
            "classifier_cross_entropy_f32",
            "classifier_cross_entropy_bf16",
            "classifier_cross_entropy_backward_f32",
            "classifier_cross_entropy_backward_bf16",
            "count_valid_targets",
        ],
    ),
    ("clip_scale.cu", &["clip_scale_f32"]),
    (
        "cross_entropy.cu",
        &[
            "cross_entropy_f32",
            "cross_entropy_bf16",
            "cross_entropy_backward_f32",
            "cross_entropy_backward_bf16",
        ],
    ),
    (
        "embedding.cu",
        &[
            "embedding_f32",
            "embedding_bf16",
            "embedding_backward_count",
            "embedding_backward_starts",
            "embedding_backward_bucket",
            "embedding_backward_f32",
            "embedding_backward_bf16",
        ],
    ),
    (
        "quantize.cu",
        &[
            "quantize_f32_e4m3",
            "quantize_f32_e5m2",
            "quantize_bf16_e4m3",
            "quantize_bf16_e5m2",
            "quantize_dual_f32_e4m3",
            "quantize_dual_f32_e5m2",
            "quantize_dual_bf16_e4m3",
            "quantize_dual_bf16_e5m2",
        ],
    ),
    (
        "rms_norm.cu",
        &[
            "rms_norm_f32",
            "rms_norm_bf16",
            "rms_norm_abs_max_f32",
            "rms_norm_abs_max_bf16",
            "rms_norm_backward_f32",
            "rms_norm_backward_bf16",
            "rms_norm_backward_add_f32",
            "rms_norm_backward_add_bf16",
            "rms_norm_backward_add_abs_max_f32",
            "rms_norm_backward_add_abs_max_bf16",
        ],
    ),
    (
        "rope.cu",
        &[
            "rope_f32",
            "rope_bf16",
            "rope_backward_f32",
            "rope_backward_bf16",
        ],
    ),
    ("split.cu", &["copy_columns_f32", "copy_columns_bf16"]),
    (
        "split_rope.cu",
        &[
            "split_rope_f32",
            "split_rope_bf16",
            "split_rope_backward_f32",
            "split_rope_backward_bf16",
            "split_rope_backward_abs_max_f32",
            "split_rope_backward_abs_max_bf16",
        ],
    ),
    ("sum_squares.cu", &["sum_squares_f32", "sum_squares_bf16"]),
    (
        "swiglu.cu",
        &[
            "swiglu_f32",
            "swiglu_bf16",
            "swiglu_abs_max_f32",
            "swiglu_abs_max_bf16",
            "swiglu_backward_f32",
            "swiglu_backward_bf16",
            "swiglu_backward_abs_max_f32",
            "swiglu_backward_abs_max_bf16",
        ],
    ),
    (
        "transpose.cu",
        &["transpose_fp8_e4m3", "transpose_fp8_e5m2"],
    ),
    (
        "zero.cu",
        &["zero_f32", "zero_bf16", "zero_e4m3", "zero_e5m2"],
    ),
];

#[test]
fn every_program_is_listed_here_and_every_op_file_has_one() {
    let programs: Vec<&str> = nvrtc::programs().map(|s| s.name).collect();
    let listed: Vec<&str> = KERNELS.iter().map(|(f, _)| *f).collect();
    assert_eq!(programs, listed, "KERNELS must name every .cu file");

    // One kernel file per op file of kernels/src/ops/ (matmuls go through cuBLASLt, copies
    // between the arenas are asynchronous memcpys on the copy streams).
    let ops = concat!(env!("CARGO_MANIFEST_DIR"), "/../kernels/src/ops");
    for entry in std::fs::read_dir(ops).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(op) = name.strip_suffix(".rs") else {
            continue;
        };
        if op == "mod" || op == "linear" || op == "fp8_matmul" || op == "copy" {
            continue;
        }
        let cu = format!("{op}.cu");
        assert!(
            nvrtc::source(&cu).is_some(),
            "kernels/src/ops/{name} has no kernels/cuda/{cu}"
        );
    }
}

#[test]
fn every_kernel_compiles_for_sm_90() {
    if !nvrtc::is_available() {
        let required = std::env::var("LLMQ_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "LLMQ_REQUIRE_NVRTC=1 but NVRTC cannot be loaded (is LD_LIBRARY_PATH set?)"
        );
        println!("SKIP nvrtc_compile: NVRTC not found (`source .ci/nvrtc.sh` to fetch it)");
        return;
    }
    let include = nvrtc::default_include_dirs();
    let mut failures = Vec::new();
    for (file, expected) in KERNELS {
        let compiled = match nvrtc::compile_with_log(file, "sm_90", &include) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e.to_string());
                continue;
            }
        };
        if !compiled.log.is_empty() {
            println!("{file}: NVRTC log:\n{}", compiled.log);
        }
        if let Some(dir) = std::env::var_os("LLMQ_PTX_DIR") {
            let path = std::path::Path::new(&dir).join(file).with_extension("ptx");
            std::fs::write(&path, &compiled.ptx).unwrap();
        }
        let mut found = nvrtc::ptx_entries(&compiled.ptx);
        found.sort_unstable();
        let mut want = expected.to_vec();
        want.sort_unstable();
        if found != want {
            failures.push(format!("{file}: PTX entries {found:?}, expected {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
