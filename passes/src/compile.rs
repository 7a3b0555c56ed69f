//! From a spec file to a plan: front-end, autodiff, passes, the memory planner (which lowers
//! its candidates), and the choices built on it: `--batch auto` and the trade-off curve.

use crate::memory_plan::{Candidates, MemoryChoice, plan_memory};
use crate::pipeline::{forward_pipeline, pass_names, pipeline};
use llmq_compiler::autodiff::{
    AutodiffError, MasterWeights, OptimizerOptions, TrainIo, TrainOptions, differentiate,
};
use llmq_compiler::ir::{Graph, Node, write_graph};
use llmq_compiler::kernels::DType;
use llmq_compiler::lower::{LowerInput, Release, lower, lower_program};
use llmq_compiler::pass::{Pass, PassContext, PassError, PassReport, run_passes};
use llmq_compiler::plan::{ModelInfo, Plan, PlanOptions, fits};
use llmq_compiler::spec::{self, ForwardModel, SpecError, SpecOptions};
use llmq_compiler::target::{DeviceProfile, Precision, format_bytes};
use std::path::Path;
use std::thread;

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
    /// How many candidate choices the memory planner estimated (0 for a choice given).
    pub candidates_estimated: usize,
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

/// Refuses state dtypes the recipe does not have: FP32 plans are the numerical reference
/// (FP32 weights, moments and no master), and moments are BF16 or FP32.
fn check_state(precision: Precision, optimizer: &OptimizerOptions) -> Result<(), CompileError> {
    let refuse = |what: String| Err(CompileError::Unsupported(what));
    if let Some(moments) = optimizer.moments
        && moments != DType::BF16
        && moments != DType::F32
    {
        return refuse(format!(
            "--moments {moments}: Adam moments are bf16 or fp32"
        ));
    }
    if precision == Precision::Fp32 {
        if optimizer.master == Some(MasterWeights::Fp32) {
            return refuse("--master fp32: fp32 plans update their FP32 weights directly".into());
        }
        if optimizer.moments == Some(DType::BF16) {
            return refuse("--moments bf16: fp32 plans keep FP32 moments".into());
        }
    }
    Ok(())
}

/// Dtypes of the training state: gradients in the weights' dtype, master weights and moments
/// as [`OptimizerOptions::state_dtypes`] says.
fn train_options(precision: Precision, optimizer: OptimizerOptions) -> TrainOptions {
    let (master_dtype, moment_dtype) = optimizer.state_dtypes(precision);
    let grad_dtype = match precision {
        Precision::Fp32 => DType::F32,
        Precision::Bf16 | Precision::Fp8 => DType::BF16,
    };
    TrainOptions {
        grad_dtype,
        master_dtype,
        moment_dtype,
        optimizer,
    }
}

/// The training graph of a spec before the training-graph passes: front-end, the forward
/// passes, then autodiff and the optimizer.
#[derive(Debug)]
pub struct TrainGraph {
    /// Forward, backward and optimizer nodes.
    pub graph: Graph,
    /// The tensors the trainer talks through.
    pub io: TrainIo,
    /// What the plan records about the model.
    pub model: ModelInfo,
    /// The forward passes' timings, and the dump asked for if it was after one of them.
    pub report: PassReport,
}

/// The forward graph of the spec at `path`, before any pass.
pub fn forward_graph(path: &Path, opts: &CompileOptions) -> Result<ForwardModel, CompileError> {
    let weight_dtype = if opts.precision == Precision::Fp32 {
        DType::F32
    } else {
        DType::BF16
    };
    Ok(spec::load(
        path,
        &SpecOptions {
            batch: opts.batch,
            seq: opts.seq,
            weight_dtype,
        },
    )?)
}

/// Builds the training graph of the spec at `path`: the forward passes not skipped run on
/// the forward graph, then autodiff.
pub fn train_graph(path: &Path, opts: &CompileOptions) -> Result<TrainGraph, CompileError> {
    check_state(opts.precision, &opts.optimizer)?;
    let model = forward_graph(path, opts)?;
    let param_count = model.param_count();
    let mut graph = model.graph;
    let ctx = pass_context(opts);
    let passes = selected(forward_pipeline(&ctx), &ctx, &opts.skip_passes)?;
    let report = run_passes(&mut graph, &passes, &ctx, opts.dump_after.as_deref())?;
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
        report,
    })
}

/// What passes see of the options.
pub fn pass_context(opts: &CompileOptions) -> PassContext {
    let (master_dtype, moment_dtype) = opts.optimizer.state_dtypes(opts.precision);
    PassContext {
        precision: opts.precision,
        master_dtype,
        moment_dtype,
        grad_fp8: opts.grad_fp8,
        vram_bytes: opts.vram_bytes,
        gpus: opts.gpus,
    }
}

/// A training graph after the optimisation passes, ready for memory planning.
struct Optimised {
    graph: Graph,
    io: TrainIo,
    model: ModelInfo,
    report: PassReport,
    ctx: PassContext,
}

/// `passes` (of a pipeline for `ctx`) less those in `skip`, which must name a pass of the
/// forward or the training pipeline that is not required.
fn selected(
    passes: Vec<&'static dyn Pass>,
    ctx: &PassContext,
    skip: &[String],
) -> Result<Vec<&'static dyn Pass>, CompileError> {
    let all: Vec<&dyn Pass> = forward_pipeline(ctx)
        .into_iter()
        .chain(pipeline(ctx))
        .collect();
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
    Ok(passes
        .into_iter()
        .filter(|p| !skip.iter().any(|s| s == p.name()))
        .collect())
}

/// Compiles the spec at `path` into a plan.
pub fn compile(path: &Path, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    let train = optimised(path, opts)?;
    let candidates = candidates(&train, opts);
    Ok(plan_within(&train, opts, &candidates, opts.vram_bytes, true)?.0)
}

/// Compiles the spec with the memory passes set by hand to `choice` instead of the planner's
/// search (tests use it to force every mechanism on a tiny model).
pub fn compile_with_choice(
    path: &Path,
    opts: &CompileOptions,
    choice: &MemoryChoice,
) -> Result<Compiled, CompileError> {
    let mut train = optimised(path, opts)?;
    let report = choice.apply(
        &mut train.graph,
        &train.ctx,
        &opts.device,
        opts.dump_after.as_deref(),
    )?;
    train.report.timings.extend(report.timings);
    if report.dump.is_some() {
        train.report.dump = report.dump;
    }
    let plan = lower_for(
        &train,
        opts,
        opts.vram_bytes,
        &train.graph,
        None,
        choice.release,
    );
    Ok(Compiled {
        plan,
        report: train.report,
        candidates_estimated: 0,
    })
}

/// Plans the spec once per choice (front-end, autodiff and passes run once): the exhaustive
/// search that checks the memory planner in tests. Plans are laid out, without prices.
pub fn plan_choices(
    path: &Path,
    opts: &CompileOptions,
    choices: &[MemoryChoice],
) -> Result<Vec<Plan>, CompileError> {
    let train = optimised(path, opts)?;
    choices
        .iter()
        .map(|choice| {
            let mut graph = train.graph.clone();
            choice.apply(&mut graph, &train.ctx, &opts.device, None)?;
            Ok(lower_for(
                &train,
                opts,
                opts.vram_bytes,
                &graph,
                None,
                choice.release,
            ))
        })
        .collect()
}

/// Compiles the spec for every micro-batch size from 1 up (doubling, up to `max_batch`) and
/// keeps the plan with the highest estimated tokens/s among those that fit (`--batch auto`).
/// `grad_accum_for(batch)` gives each size's gradient accumulation (what makes it up to a
/// global batch, say), or `None` for a size not to try, which ends the search.
pub fn compile_auto_batch(
    path: &Path,
    opts: &CompileOptions,
    max_batch: u64,
    grad_accum_for: impl Fn(u64) -> Option<u32>,
) -> Result<Compiled, CompileError> {
    // Sizes are compared on unpriced plans; only the chosen one is planned again, priced.
    let mut best: Option<(CompileOptions, f64)> = None;
    let mut batch = 1;
    while batch <= max_batch {
        let Some(grad_accum) = grad_accum_for(batch) else {
            break;
        };
        let sized = CompileOptions {
            batch,
            grad_accum,
            ..opts.clone()
        };
        let train = optimised(path, &sized)?;
        let candidates = candidates(&train, &sized);
        let (compiled, _) = plan_within(&train, &sized, &candidates, opts.vram_bytes, false)?;
        if !fits(&compiled.plan) {
            break;
        }
        let speed = compiled.plan.estimates.tokens_per_second;
        if best.as_ref().is_none_or(|(_, fastest)| speed > *fastest) {
            best = Some((sized, speed));
        }
        batch *= 2;
    }
    let best = best.map(|(sized, _)| compile(path, &sized));
    best.transpose()?.ok_or_else(|| {
        CompileError::Unsupported(format!(
            "--batch auto: not even one sequence of {} tokens fits {}",
            opts.seq,
            format_bytes(opts.vram_bytes)
        ))
    })
}

/// One point of the trade-off curve: a budget and the plan the memory planner makes for it.
#[derive(Clone, Debug, PartialEq)]
pub struct CurvePoint {
    /// Device memory budget in bytes.
    pub vram_bytes: u64,
    /// Estimated tokens/s, or `None` when nothing fits the budget.
    pub tokens_per_second: Option<f64>,
    /// Device arena the plan needs.
    pub arena_bytes: u64,
    /// The memory planner's choice in one line (`on host: master, adam m; recompute L0-L27`).
    pub decisions: String,
}

/// The budget → estimated tokens/s curve for the spec and flags (`llmqc plan --explain`).
pub fn tradeoff_curve(
    path: &Path,
    opts: &CompileOptions,
    budgets: &[u64],
) -> Result<Vec<CurvePoint>, CompileError> {
    let train = optimised(path, opts)?;
    let candidates = candidates(&train, opts);
    // The budgets are independent: plan them on threads, sharing the candidates' estimates.
    let points: Vec<Result<CurvePoint, CompileError>> = thread::scope(|scope| {
        let runs: Vec<_> = budgets
            .iter()
            .map(|&vram| {
                let (train, candidates) = (&train, &candidates);
                scope.spawn(move || {
                    let (compiled, choice) = plan_within(train, opts, candidates, vram, false)?;
                    let plan = &compiled.plan;
                    Ok(CurvePoint {
                        vram_bytes: vram,
                        tokens_per_second: fits(plan).then_some(plan.estimates.tokens_per_second),
                        arena_bytes: plan.device_arena_bytes,
                        decisions: choice.describe(),
                    })
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("planning a budget does not panic"))
            .collect()
    });
    points.into_iter().collect()
}

/// Spec, autodiff and the optimisation passes.
fn optimised(path: &Path, opts: &CompileOptions) -> Result<Optimised, CompileError> {
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
        mut report,
    } = train_graph(path, opts)?;
    let ctx = pass_context(opts);
    let passes = selected(pipeline(&ctx), &ctx, &opts.skip_passes)?;
    // The graph as autodiff left it, before any training-graph pass.
    if opts.dump_after.as_deref() == Some("autodiff") {
        report.dump = Some(write_graph(&graph));
    }
    let train_report = run_passes(&mut graph, &passes, &ctx, opts.dump_after.as_deref())?;
    report.timings.extend(train_report.timings);
    if train_report.dump.is_some() {
        report.dump = train_report.dump;
    }
    Ok(Optimised {
        graph,
        io,
        model,
        report,
        ctx,
    })
}

/// Lowers `graph` (the training graph after memory passes), or `program` over its tensors,
/// for the flags and budget, releasing copies' sources by `release`.
fn lower_for(
    train: &Optimised,
    opts: &CompileOptions,
    vram_bytes: u64,
    graph: &Graph,
    program: Option<Vec<Node>>,
    release: Release,
) -> Plan {
    let input = LowerInput {
        graph,
        io: &train.io,
        model: train.model.clone(),
        options: plan_options(opts, vram_bytes),
        device: opts.device.clone(),
        release,
    };
    match program {
        Some(program) => lower_program(input, program),
        None => lower(input),
    }
}

/// The options a plan records.
fn plan_options(opts: &CompileOptions, vram_bytes: u64) -> PlanOptions {
    PlanOptions {
        batch: opts.batch,
        seq: opts.seq,
        grad_accum: opts.grad_accum,
        precision: opts.precision,
        vram_bytes,
        gpus: opts.gpus,
        optimizer: opts.optimizer.clone(),
    }
}

/// The memory planner's candidates for the optimised graph.
fn candidates<'a>(train: &'a Optimised, opts: &CompileOptions) -> Candidates<'a> {
    Candidates::new(
        &train.graph,
        &opts.device,
        &plan_options(opts, opts.vram_bytes),
    )
}

/// The memory planner for a budget, then lowering; `price` as for `plan_memory`.
fn plan_within(
    train: &Optimised,
    opts: &CompileOptions,
    candidates: &Candidates<'_>,
    vram_bytes: u64,
    price: bool,
) -> Result<(Compiled, MemoryChoice), CompileError> {
    let lower_graph = |graph: &Graph, program: Option<Vec<Node>>, release: Release| {
        lower_for(train, opts, vram_bytes, graph, program, release)
    };
    let ctx = PassContext {
        vram_bytes,
        ..train.ctx.clone()
    };
    let memory = plan_memory(
        candidates,
        &ctx,
        opts.dump_after.as_deref(),
        &lower_graph,
        price,
    )?;
    let mut report = PassReport {
        timings: train.report.timings.clone(),
        dump: train.report.dump.clone(),
    };
    report.timings.extend(memory.report.timings);
    if memory.report.dump.is_some() {
        report.dump = memory.report.dump;
    }
    let compiled = Compiled {
        plan: memory.plan,
        report,
        candidates_estimated: candidates.estimated(),
    };
    Ok((compiled, memory.choice))
}
