//! The pipeline: which passes run, in which order, for a target. Branches on precision and
//! GPU count live here and nowhere else.
//!
//! FP8 casts and the memory planner come with their issue (#5), each as one file here, and are
//! listed below when they land.

use crate::fusion::Fusion;
use llmq_compiler::pass::{Pass, PassContext};

/// The passes for this target, in run order.
pub fn pipeline(ctx: &PassContext) -> Vec<&'static dyn Pass> {
    let _ = ctx;
    vec![&Fusion]
}

/// Names accepted by `--dump-after`: the pipeline's, then the memory planner's passes.
pub fn pass_names() -> Vec<&'static str> {
    let all = PassContext {
        precision: llmq_compiler::target::Precision::Bf16,
        vram_bytes: u64::MAX,
        gpus: 1,
    };
    let mut names: Vec<&'static str> = pipeline(&all).iter().map(|p| p.name()).collect();
    names.extend(crate::memory_plan::MEMORY_PASSES);
    names
}
