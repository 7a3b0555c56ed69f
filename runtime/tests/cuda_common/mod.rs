//! What the GPU test files share.

use llmq_compiler::plan::QUANTIZE_WEIGHTS_SECTION;
use llmq_runtime::backend::Backend;

/// Runs the plan's `quantize_weights` section, where it has one (plans that keep the weights'
/// FP8 copies across micro-batches make them after each optimizer step and after the weights
/// are written), as the trainer does.
pub fn quantize_weights(backend: &mut dyn Backend) {
    let plan = backend.plan();
    if plan
        .sections
        .iter()
        .any(|s| s.name == QUANTIZE_WEIGHTS_SECTION)
    {
        backend.run_section(QUANTIZE_WEIGHTS_SECTION).unwrap();
    }
}
