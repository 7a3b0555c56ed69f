//! The pipeline: which passes run, in which order, for a target. Branches on precision and
//! GPU count live here and nowhere else.
//!
//! The precision passes run first, so that fusion sees (and may fold) the casts they place.
//! The memory planner comes with its issue (#5), as one file here, and is listed below when it
//! lands.

use crate::fp8_casts::Fp8Casts;
use crate::fusion::Fusion;
use crate::stochastic_rounding::StochasticRounding;
use llmq_compiler::kernels::DType;
use llmq_compiler::pass::{Pass, PassContext};
use llmq_compiler::target::Precision;

/// LLMQ's numeric recipe: FP8 block matmuls, stochastic rounding of BF16 state.
const FP8_RECIPE: &[&dyn Pass] = &[&Fp8Casts, &StochasticRounding];

/// The passes for this target, in run order.
pub fn pipeline(ctx: &PassContext) -> Vec<&'static dyn Pass> {
    let mut passes = Vec::new();
    if ctx.precision == Precision::Fp8 {
        passes.extend_from_slice(FP8_RECIPE);
    }
    passes.push(&Fusion);
    passes
}

/// Names accepted by `--dump-after`: the passes of the pipeline that runs the most, then the
/// memory planner's passes.
pub fn pass_names() -> Vec<&'static str> {
    let all = PassContext {
        precision: Precision::Fp8,
        grad_fp8: DType::F8E4M3,
        vram_bytes: u64::MAX,
        gpus: 1,
    };
    let mut names: Vec<&'static str> = pipeline(&all).iter().map(|p| p.name()).collect();
    names.extend(crate::memory_plan::MEMORY_PASSES);
    names
}
