//! From a spec file to a plan: front-end, autodiff, passes, lowering.

use crate::pipeline::{pass_names, pipeline};
use llmq_compiler::autodiff::{AutodiffError, OptimizerOptions, TrainOptions, differentiate};
use llmq_compiler::ir::write_graph;
use llmq_compiler::kernels::DType;
use llmq_compiler::lower::{LowerInput, lower};
use llmq_compiler::pass::{Pass, PassContext, PassError, PassReport, run_passes};
use llmq_compiler::plan::{ModelInfo, Plan, PlanOptions};
use llmq_compiler::spec::{self, SpecError, SpecOptions};
use llmq_compiler::target::{DeviceProfile, Precision};
use std::path::Path;

/// Everything a plan depends on besides the spec file.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Sequences per micro-batch.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// Micro-batches per optimizer step.
    pub grad_accum: u32,
    /// The numeric recipe.
    pub precision: Precision,
    /// Device memory budget in bytes.
    pub vram_bytes: u64,
    /// Number of GPUs.
    pub gpus: u32,
    /// The device the estimates are for.
    pub device: DeviceProfile,
    /// AdamW and clipping.
    pub optimizer: OptimizerOptions,
    /// A pass (or `autodiff`) after which to keep the graph's text.
    pub dump_after: Option<String>,
    /// Passes not to run (to trace a wrong plan to the pass that made it).
    pub skip_passes: Vec<String>,
}

/// A plan and what the compiler can tell about making it.
#[derive(Debug)]
pub struct Compiled {
    /// The plan.
    pub plan: Plan,
    /// Pass timings and the requested dump.
    pub report: PassReport,
}

/// Why compiling failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CompileError {
    /// The spec is wrong (the diagnostic points into it).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Spec(#[from] SpecError),
    /// Autodiff failed: a bug in a backward rule.
    #[error(transparent)]
    Autodiff(#[from] AutodiffError),
    /// A pass failed or broke the graph.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The flags ask for something not available.
    #[error("{0}")]
    Unsupported(String),
}

/// Dtypes of the training state for a precision.
fn train_options(precision: Precision, optimizer: OptimizerOptions) -> TrainOptions {
    match precision {
        Precision::Fp32 => TrainOptions {
            grad_dtype: DType::F32,
            master_dtype: None,
            moment_dtype: DType::F32,
            optimizer,
        },
        Precision::Bf16 | Precision::Fp8 => TrainOptions {
            grad_dtype: DType::BF16,
            master_dtype: Some(DType::F32),
            moment_dtype: DType::F32,
            optimizer,
        },
    }
}

/// The pipeline for `ctx` less the passes in `skip`, which must exist and not be required.
fn selected_passes(
    ctx: &PassContext,
    skip: &[String],
) -> Result<Vec<&'static dyn Pass>, CompileError> {
    let all = pipeline(ctx);
    for name in skip {
        match all.iter().find(|p| p.name() == name) {
            None => {
                return Err(CompileError::Unsupported(format!(
                    "--skip-pass {name}: no such pass in this pipeline; it runs: {}",
                    all.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                )));
            }
            Some(p) if p.is_required() => {
                return Err(CompileError::Unsupported(format!(
                    "--skip-pass {name}: the plan would be wrong without this pass"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(all
        .into_iter()
        .filter(|p| !skip.iter().any(|s| s == p.name()))
        .collect())
}

/// Compiles the spec at `path` into a plan.
pub fn compile(path: &Path, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    if opts.gpus != 1 {
        return Err(CompileError::Unsupported(format!(
            "--gpus {}: multi-GPU plans (sharding and collectives) are not implemented yet; plan for --gpus 1",
            opts.gpus
        )));
    }
    if opts.precision == Precision::Fp8 {
        return Err(CompileError::Unsupported(
            "--precision fp8: the precision pass that places the FP8 casts is not implemented yet; \
             use --precision bf16"
                .into(),
        ));
    }
    let known = pass_names();
    if let Some(name) = &opts.dump_after
        && name != "autodiff"
        && !known.contains(&name.as_str())
    {
        return Err(CompileError::Unsupported(format!(
            "--dump-after {name}: no such pass; known: autodiff, {}",
            known.join(", ")
        )));
    }
    let weight_dtype = if opts.precision == Precision::Fp32 {
        DType::F32
    } else {
        DType::BF16
    };
    let model = spec::load(
        path,
        &SpecOptions {
            batch: opts.batch,
            seq: opts.seq,
            weight_dtype,
        },
    )?;
    let param_count = model.param_count();
    let mut graph = model.graph;
    let train = train_options(opts.precision, opts.optimizer.clone());
    let io = differentiate(&mut graph, model.tokens, model.targets, model.loss, &train)?;
    let ctx = PassContext {
        precision: opts.precision,
        vram_bytes: opts.vram_bytes,
        gpus: opts.gpus,
    };
    let passes = selected_passes(&ctx, &opts.skip_passes)?;
    // The graph as autodiff left it, before any pass.
    let autodiff_dump =
        (opts.dump_after.as_deref() == Some("autodiff")).then(|| write_graph(&graph));
    let mut report = run_passes(&mut graph, &passes, &ctx, opts.dump_after.as_deref())?;
    if autodiff_dump.is_some() {
        report.dump = autodiff_dump;
    }
    let plan = lower(LowerInput {
        graph: &graph,
        io: &io,
        model: ModelInfo {
            name: model.name,
            fingerprint: model.fingerprint,
            dims: model.dims,
            param_count,
        },
        options: PlanOptions {
            batch: opts.batch,
            seq: opts.seq,
            grad_accum: opts.grad_accum,
            precision: opts.precision,
            vram_bytes: opts.vram_bytes,
            gpus: opts.gpus,
            optimizer: opts.optimizer.clone(),
        },
        device: opts.device.clone(),
    });
    Ok(Compiled { plan, report })
}
