//! What the GPU test files share (each uses part of it).
#![allow(dead_code)]

use llmq_compiler::plan::QUANTIZE_WEIGHTS_SECTION;
use llmq_runtime::backend::Backend;
use llmq_runtime::backend::cuda;

/// Runs the plan's `quantize_weights` section, where it has one (plans that keep the weights'
/// FP8 copies across micro-batches make them after each optimizer step and after the weights
/// are written), as the trainer does.
pub fn quantize_weights(backend: &mut dyn Backend) {
    if backend.plan().section(QUANTIZE_WEIGHTS_SECTION).is_some() {
        backend.run_section(QUANTIZE_WEIGHTS_SECTION).unwrap();
    }
}

/// True when a GPU is usable; otherwise prints why `test` is skipped.
pub fn gpu_present(test: &str) -> bool {
    match cuda::probe() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("{test}: skipped, no GPU: {why}");
            false
        }
    }
}

/// The run's random seed: `LLMQ_TEST_SEED`, or fresh from the clock (printed, to repeat a run).
pub fn seed() -> u64 {
    let seed = std::env::var("LLMQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (LLMQ_TEST_SEED={seed} repeats this run)");
    seed
}
