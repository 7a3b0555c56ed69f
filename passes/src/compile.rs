//! From a spec file to a plan: front-end, autodiff, passes, lowering.

use crate::pipeline::{pass_names, pipeline};
use llmq_compiler::autodiff::{
    AutodiffError, OptimizerOptions, TrainIo, TrainOptions, differentiate,
};
use llmq_compiler::ir::{Graph, write_graph};
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
    /// The FP8 format of gradients in FP8 matmuls: e4m3 (LLMQ's default) or e5m2.
    pub grad_fp8: DType,
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

/// Dtypes of the training state for a precision. FP8 keeps LLMQ's BF16 Adam moments (written
/// with stochastic rounding by the `stochastic_rounding` pass).
fn train_options(precision: Precision, optimizer: OptimizerOptions) -> TrainOptions {
    let (grad_dtype, master_dtype, moment_dtype) = match precision {
        Precision::Fp32 => (DType::F32, None, DType::F32),
        Precision::Bf16 => (DType::BF16, Some(DType::F32), DType::F32),
        Precision::Fp8 => (DType::BF16, Some(DType::F32), DType::BF16),
    };
    TrainOptions {
        grad_dtype,
        master_dtype,
        moment_dtype,
        optimizer,
    }
}

/// The training graph of a spec before any pass: front-end, then autodiff and the optimizer.
#[derive(Debug)]
pub struct TrainGraph {
    /// Forward, backward and optimizer nodes.
    pub graph: Graph,
    /// The tensors the trainer talks through.
    pub io: TrainIo,
    /// What the plan records about the model.
    pub model: ModelInfo,
}

/// Builds the training graph of the spec at `path`.
pub fn train_graph(path: &Path, opts: &CompileOptions) -> Result<TrainGraph, CompileError> {
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
    Ok(TrainGraph {
        graph,
        io,
        model: ModelInfo {
            name: model.name,
            fingerprint: model.fingerprint,
            dims: model.dims,
            param_count,
        },
    })
}

/// What passes see of the options.
pub fn pass_context(opts: &CompileOptions) -> PassContext {
    PassContext {
        precision: opts.precision,
        grad_fp8: opts.grad_fp8,
        vram_bytes: opts.vram_bytes,
        gpus: opts.gpus,
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
    if !opts.grad_fp8.is_fp8() {
        return Err(CompileError::Unsupported(format!(
            "gradient format {}: FP8 matmul gradients are e4m3 or e5m2",
            opts.grad_fp8
        )));
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
    let TrainGraph {
        mut graph,
        io,
        model,
    } = train_graph(path, opts)?;
    let ctx = pass_context(opts);
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
        model,
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
