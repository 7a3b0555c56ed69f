//! The pipeline: which passes run, in which order, for a target. Branches on precision and
//! GPU count live here and nowhere else.
//!
//! Forward passes run on the forward graph before autodiff, so the backward is derived from
//! what they make (horizontal fusion's packed linears get packed backward matmuls). The
//! precision passes then run first on the training graph, so that fusion sees (and may fold)
//! the casts they place.
//! The memory planner comes with its issue (#5), as one file here, and is listed below when it
//! lands.

use crate::fp8_casts::Fp8Casts;
use crate::fusion::Fusion;
use crate::horizontal_fusion::HorizontalFusion;
use crate::stochastic_rounding::StochasticRounding;
use llmq_compiler::kernels::DType;
use llmq_compiler::pass::{Pass, PassContext};
use llmq_compiler::target::Precision;

/// LLMQ's numeric recipe: FP8 block matmuls, stochastic rounding of BF16 state.
const FP8_RECIPE: &[&dyn Pass] = &[&Fp8Casts, &StochasticRounding];

/// The passes run on the forward graph, before autodiff, in run order.
pub fn forward_pipeline(_: &PassContext) -> Vec<&'static dyn Pass> {
    vec![&HorizontalFusion]
}

/// The passes run on the training graph for this target, in run order.
pub fn pipeline(ctx: &PassContext) -> Vec<&'static dyn Pass> {
    let mut passes = Vec::new();
    match ctx.precision {
        Precision::Fp8 => passes.extend_from_slice(FP8_RECIPE),
        // BF16 state beyond the weights (`--moments bf16`, `--master none`) is LLMQ's, and
        // rounds stochastically as under fp8; the default BF16 state (FP32 masters and
        // moments) has nothing to round.
        Precision::Bf16 if ctx.moment_dtype == DType::BF16 || ctx.master_dtype.is_none() => {
            passes.push(&StochasticRounding)
        }
        Precision::Bf16 | Precision::Fp32 => {}
    }
    passes.push(&Fusion);
    passes
}

/// Names accepted by `--dump-after`: the forward passes, the passes of the pipeline that runs
/// the most, then the memory planner's passes.
pub fn pass_names() -> Vec<&'static str> {
    let all = PassContext {
        precision: Precision::Fp8,
        master_dtype: Some(DType::F32),
        moment_dtype: DType::BF16,
        grad_fp8: DType::F8E4M3,
        vram_bytes: u64::MAX,
        gpus: 1,
    };
    let passes = forward_pipeline(&all).into_iter().chain(pipeline(&all));
    let mut names: Vec<&'static str> = passes.map(|p| p.name()).collect();
    names.extend(crate::memory_plan::MEMORY_PASSES);
    names
}
