//! The training-recipe flags that both binaries plan with (`llmqc plan`, and `llmq-run` when it
//! is given a spec): one declaration, so their names, defaults and help never drift apart.
//! Included by each binary with `#[path]`; the package has no library target.

use llmq_compiler::autodiff::{MasterWeights, OptimizerOptions};
use llmq_compiler::kernels::DType;
use llmq_compiler::target::{Precision, parse_grad_fp8};
use std::str::FromStr;

/// How a step trains: numerics, accumulation and the optimizer's settings.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Training recipe (planned into the plan)")]
pub struct RecipeArgs {
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: u32,
    /// Sequences per optimizer step (the global batch), instead of `--grad-accum`: the
    /// micro-batch times the accumulation. With `llmqc plan --batch auto` the planner tries the
    /// sizes that divide it, each with the accumulation that makes it up (LLMQ's published
    /// runs: 512).
    #[arg(long, conflicts_with = "grad_accum", value_parser = clap::value_parser!(u64).range(1..))]
    pub global_batch: Option<u64>,
    /// Numeric recipe: fp8 (LLMQ's: FP8 block matmuls, stochastic rounding), bf16 or fp32.
    #[arg(long, default_value = "fp8", value_parser = Precision::from_str)]
    pub precision: Precision,
    /// FP8 format of gradients in the FP8 matmuls: e4m3 or e5m2.
    #[arg(long, default_value = "e4m3", value_parser = parse_grad_fp8)]
    pub grad_fp8: DType,
    /// AdamW weight decay on matrices.
    #[arg(long, default_value_t = OptimizerOptions::default().weight_decay)]
    pub weight_decay: f32,
    /// Global gradient-norm clipping threshold, 0 to disable.
    #[arg(long, default_value_t = OptimizerOptions::default().max_grad_norm)]
    pub grad_clip: f32,
    /// Master weights: fp32 (the default: AdamW updates FP32 copies, rounded into the BF16
    /// weights), or none (AdamW updates the BF16 weights in place with stochastic rounding, as
    /// LLMQ's `--model-dtype=bf16` and its published runs do: 4 bytes less per parameter).
    #[arg(long, value_parser = MasterWeights::from_str)]
    pub master: Option<MasterWeights>,
    /// Adam moments' dtype: bf16 (the fp8 default, LLMQ's, stochastically rounded) or fp32
    /// (the bf16 default). LLMQ's published runs: `--master none --moments bf16`.
    #[arg(long, value_parser = parse_moments)]
    pub moments: Option<DType>,
}

/// Parses `--moments`: `bf16` or `fp32`.
fn parse_moments(s: &str) -> Result<DType, String> {
    match s {
        "bf16" => Ok(DType::BF16),
        "fp32" => Ok(DType::F32),
        _ => Err(format!("unknown moments dtype `{s}`: use bf16 or fp32")),
    }
}

impl RecipeArgs {
    /// Micro-batches per step for micro-batches of `batch` sequences: `--grad-accum`, or what
    /// makes them up to `--global-batch`.
    pub fn grad_accum_for(&self, batch: u64) -> Result<u32, String> {
        let Some(global) = self.global_batch else {
            return Ok(self.grad_accum);
        };
        if !global.is_multiple_of(batch) {
            return Err(format!(
                "--global-batch {global} is not a multiple of --batch {batch}: give a batch that divides it"
            ));
        }
        u32::try_from(global / batch).map_err(|_| {
            format!(
                "--global-batch {global}: {} micro-batches per step are too many",
                global / batch
            )
        })
    }

    /// AdamW's settings: the flags over the defaults.
    pub fn optimizer(&self) -> OptimizerOptions {
        OptimizerOptions {
            weight_decay: self.weight_decay,
            max_grad_norm: self.grad_clip,
            master: self.master,
            moments: self.moments,
            ..Default::default()
        }
    }
}
