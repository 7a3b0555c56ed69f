//! `llmq-run`: trains a model by replaying a plan on a backend.
//!
//! With no arguments it trains the embedded tiny model on the bundled corpus (Jane Austen's
//! "Pride and Prejudice", byte-level) on the CPU: the quickest way to see the system work.

use clap::parser::ValueSource;
use clap::{Args as _, CommandFactory, FromArgMatches, Parser, ValueEnum};
use llmq_compiler::plan::Plan;
use llmq_compiler::target::device;
use llmq_passes::{CompileOptions, compile};
use llmq_runtime::backend::cpu::CpuBackend;
use llmq_runtime::backend::cuda::{self, CudaBackend, CudaOptions};
use llmq_runtime::backend::{Backend, BackendError};
use llmq_runtime::train::checkpoint::latest_checkpoint;
use llmq_runtime::train::data::{DataLoader, TokenDataset, TokenVersion, write_token_file};
use llmq_runtime::train::schedule::{Schedule, ScheduleParams};
use llmq_runtime::train::tokenizer::bundled_train_eval;
use llmq_runtime::trainer::{JsonLog, StepRecord, Trainer, TrainerOptions};
use miette::{Context, IntoDiagnostic, Result, miette};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[path = "../recipe_args.rs"]
mod recipe_args;
use recipe_args::RecipeArgs;

const TINY_SPEC: &str = include_str!("../../models/tiny.ron");
const LLAMA_ARCH: &str = include_str!("../../models/arch/llama.ron");

/// Train a language model from a plan (`llmqc plan -o plan.bin`) or a model spec.
///
/// Examples:
///   llmq-run                                    # tiny model, bundled corpus, CPU
///   llmq-run models/tiny.ron --steps 1000 --data 'data/*.bin'
///   llmq-run plan.bin --data 'train/*.bin' --eval-data val.bin --resume
///   llmq-run models/smollm2-135m.ron --init-from SmolLM2-135M.gguf --data austen-smollm.bin
#[derive(Parser)]
#[command(name = "llmq-run", version, verbatim_doc_comment)]
struct Args {
    /// A plan file (.bin) or a model spec (.ron). Default: the embedded tiny model.
    model: Option<PathBuf>,
    /// Where to run: cuda when a GPU is found, else cpu.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Training token files (llm.c format, see docs/data.md); globs allowed, repeatable.
    /// Default: the bundled corpus.
    #[arg(long)]
    data: Vec<String>,
    /// Evaluation token files. Default: the bundled corpus's last 5% (with the default data).
    #[arg(long)]
    eval_data: Vec<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Final learning rate of decaying schedules.
    #[arg(long, default_value_t = 3e-4)]
    min_lr: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Learning-rate schedule: cosine, linear, wsd or constant.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    /// WSD: share of the steps, at the end, spent decaying.
    #[arg(long, default_value_t = 0.2)]
    decay_fraction: f32,
    /// Sequences per micro-batch (when planning a spec).
    #[arg(long, default_value_t = 8)]
    batch: u64,
    /// Tokens per sequence (when planning a spec).
    #[arg(long, default_value_t = 64)]
    seq: u64,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Seed of initialisation and data order.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Run directory: checkpoints, the JSON-lines log, the bundled corpus's token files.
    #[arg(long, default_value = "runs/default")]
    out_dir: PathBuf,
    /// Checkpoint every N steps (and at the end); 0 for only at the end.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Write no checkpoint at all (benchmarks, smoke runs): the trained state is lost at exit.
    #[arg(long, conflicts_with_all = ["checkpoint_every", "keep"])]
    no_checkpoints: bool,
    /// Keep the last K checkpoints (0 keeps all).
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Continue from the newest checkpoint in the run directory (or from the one given).
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
    resume: Option<Option<PathBuf>>,
    /// Start from pretrained weights instead of the random init: a Hugging Face
    /// model.safetensors, a directory of shards (model.safetensors.index.json) or a llama.cpp
    /// .gguf (F32, F16, BF16, Q8_0, Q4_0, Q4_1), matched to the spec's Hugging Face names.
    #[arg(long, value_name = "PATH", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Evaluate every N steps (0: never).
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Micro-batches per evaluation.
    #[arg(long, default_value_t = 4)]
    eval_batches: u64,
    /// Stop after this many steps with a non-finite loss or gradient norm.
    #[arg(long, default_value_t = 5)]
    max_bad_steps: u32,
    /// CUDA: launch every step every time instead of replaying captured CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
    /// CUDA: run attention on LLMQ-rs's own kernels, not cuDNN's fused flash attention (which
    /// serves BF16 heads of 64 and 128 at sequences a multiple of 128). The own backward is
    /// deterministic; cuDNN's sums dq with atomics, so its last bits can vary between runs.
    #[arg(long)]
    own_attention: bool,
    /// CUDA: run the cuBLASLt heuristics' first algorithm for every matmul instead of timing
    /// their candidates at start-up and running the fastest. The choice then is the same every
    /// run (autotuning may choose differently between runs where candidates are close, and
    /// different algorithms may round differently).
    #[arg(long)]
    no_autotune: bool,
    /// After training, time every step once (one extra optimizer step) and print the measured
    /// time per op and per section beside the planner's estimate.
    #[arg(long)]
    profile: bool,
    /// Instead of training: run forward and backward of the first micro-batch on the initial (or
    /// resumed) weights, write the weights, the batch, the loss and every gradient to DIR as
    /// safetensors, and stop. For checking numerics against another implementation
    /// (tools/hf_step_check.py compares with PyTorch + transformers).
    #[arg(long, value_name = "DIR")]
    dump_step: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    Auto,
    Cpu,
    Cuda,
}

/// The plan: read from a .bin, planned from a .ron, or planned from the embedded tiny model.
fn load_plan(args: &Args) -> Result<Plan> {
    let spec_path = match &args.model {
        Some(path) if path.extension().is_some_and(|e| e == "bin") => {
            let bytes = std::fs::read(path)
                .into_diagnostic()
                .wrap_err_with(|| format!("reading {}", path.display()))?;
            return Plan::from_bytes(&bytes).map_err(|e| miette!("{}: {e}", path.display()));
        }
        Some(path) => path.clone(),
        None => {
            let dir = args.out_dir.join("spec");
            std::fs::create_dir_all(dir.join("arch")).into_diagnostic()?;
            std::fs::write(dir.join("tiny.ron"), TINY_SPEC).into_diagnostic()?;
            std::fs::write(dir.join("arch/llama.ron"), LLAMA_ARCH).into_diagnostic()?;
            dir.join("tiny.ron")
        }
    };
    let device = device("h100").expect("h100 is a known device");
    let opts = CompileOptions {
        batch: args.batch,
        seq: args.seq,
        grad_accum: args
            .recipe
            .grad_accum_for(args.batch)
            .map_err(|e| miette!("{e}"))?,
        precision: args.recipe.precision,
        grad_fp8: args.recipe.grad_fp8,
        vram_bytes: (device.memory_gib * (1u64 << 30) as f64) as u64,
        gpus: 1,
        device,
        optimizer: args.recipe.optimizer(),
        dump_after: None,
        skip_passes: Vec::new(),
    };
    Ok(compile(&spec_path, &opts)?.plan)
}

/// Token file patterns for training and eval; the bundled corpus written once when none given.
fn data_patterns(args: &Args, vocab: u64) -> Result<(Vec<String>, Vec<String>)> {
    if !args.data.is_empty() {
        return Ok((args.data.clone(), args.eval_data.clone()));
    }
    if vocab < 256 {
        return Err(miette!(
            "the bundled corpus is byte-level (256 tokens); this model's vocabulary is {vocab}: give --data"
        ));
    }
    let dir = args.out_dir.join("data");
    let (train, eval) = (dir.join("austen-train.bin"), dir.join("austen-eval.bin"));
    if !train.exists() || !eval.exists() {
        std::fs::create_dir_all(&dir).into_diagnostic()?;
        let split = bundled_train_eval();
        write_token_file(&train, &split.train, TokenVersion::U16).into_diagnostic()?;
        write_token_file(&eval, &split.eval, TokenVersion::U16).into_diagnostic()?;
    }
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let eval = if args.eval_data.is_empty() {
        vec![path(&eval)]
    } else {
        args.eval_data.clone()
    };
    Ok((vec![path(&train)], eval))
}

/// The backend asked for; `auto` takes cuda when [`cuda::probe`] finds a GPU, else cpu.
/// The backend to run `plan` on. With `cpu_fallback` (auto, on the embedded default model), a
/// plan the GPU cannot run yet trains on the CPU instead, with a note saying why.
fn make_backend(
    kind: BackendKind,
    plan: Plan,
    options: CudaOptions,
    cpu_fallback: bool,
) -> Result<Box<dyn Backend>> {
    let use_cuda = match kind {
        BackendKind::Cpu => false,
        BackendKind::Cuda => true,
        BackendKind::Auto => cuda::probe().is_ok(),
    };
    if !use_cuda {
        return Ok(Box::new(CpuBackend::new(plan)));
    }
    match CudaBackend::new(plan.clone(), options) {
        Ok(backend) => {
            eprintln!("{}", backend.attention_summary());
            eprintln!("{}", backend.matmul_summary());
            Ok(Box::new(backend))
        }
        Err(BackendError::Unsupported(why)) if cpu_fallback => {
            eprintln!("note: {why}; running on the CPU instead");
            Ok(Box::new(CpuBackend::new(plan)))
        }
        Err(e) => Err(miette!("--backend cuda: {e}")),
    }
}

/// Times every step once and prints, per section and per op, the measured milliseconds beside
/// the planner's estimate.
fn print_profile(backend: &mut dyn Backend) -> Result<()> {
    let sections = backend.plan().sections.clone();
    let mut per_op: Vec<(String, usize, f64, f64)> = Vec::new();
    println!("profile (each step alone, no graphs):");
    for section in &sections {
        let Some(times) = backend
            .step_times(section.start, section.end)
            .into_diagnostic()?
        else {
            println!("  the {} backend cannot time its steps", backend.name());
            return Ok(());
        };
        let steps = &backend.plan().steps[section.start as usize..section.end as usize];
        let estimate: f64 = steps.iter().map(|s| s.estimate.seconds).sum();
        let measured: f64 = times.iter().sum();
        println!(
            "  section {:<10} measured {:>9.3} ms   estimated {:>9.3} ms",
            section.name,
            measured * 1e3,
            estimate * 1e3
        );
        for (step, t) in steps.iter().zip(times) {
            let name = step.node.op.name().to_string();
            match per_op.iter_mut().find(|(n, ..)| *n == name) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += t;
                    entry.3 += step.estimate.seconds;
                }
                None => per_op.push((name, 1, t, step.estimate.seconds)),
            }
        }
    }
    per_op.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!(
        "  {:<24} {:>6} {:>12} {:>12}",
        "op", "steps", "measured ms", "estimate ms"
    );
    for (name, count, measured, estimate) in per_op {
        println!(
            "  {name:<24} {count:>6} {:>12.3} {:>12.3}",
            measured * 1e3,
            estimate * 1e3
        );
    }
    Ok(())
}

fn format_record(r: &StepRecord, total: u64) -> String {
    let mut line = format!(
        "step {:>5}/{total} ({:>3.0}%) | loss {:.4} | grad norm {:.3} | lr {:.2e} | {:>8.0} tok/s",
        r.step,
        100.0 * r.step as f64 / total as f64,
        r.loss,
        r.grad_norm,
        r.lr,
        r.tokens_per_second
    );
    match r.mfu {
        Some(mfu) => line.push_str(&format!(" | MFU {:.1}%", 100.0 * mfu)),
        None => line.push_str(" | MFU n/a (cpu)"),
    }
    if let Some(e) = r.eval_loss {
        line.push_str(&format!(" | eval loss {e:.4}"));
    }
    if !r.applied {
        line.push_str(" | SKIPPED: non-finite");
    }
    line
}

fn run(args: Args) -> Result<()> {
    let plan = load_plan(&args)?;
    let vocab = plan.model.dims.get("vocab").copied().unwrap_or(0);
    let (train_patterns, eval_patterns) = data_patterns(&args, vocab)?;
    let (batch, seq) = (plan.options.batch as usize, plan.options.seq as usize);
    let train_set = TokenDataset::open(&train_patterns, vocab as u32).into_diagnostic()?;
    let train = DataLoader::new(train_set, batch, seq, args.seed).into_diagnostic()?;
    let eval = if eval_patterns.is_empty() {
        None
    } else {
        let set = TokenDataset::open(&eval_patterns, vocab as u32).into_diagnostic()?;
        Some(DataLoader::new(set, batch, seq, args.seed).into_diagnostic()?)
    };
    let params = ScheduleParams {
        lr: args.lr,
        min_lr: args.min_lr,
        warmup_steps: args.warmup,
        decay_fraction: args.decay_fraction,
    };
    let schedule = Schedule::parse(&args.schedule, params).into_diagnostic()?;
    let checkpoints = args.out_dir.join("checkpoints");
    let (model, params, tokens) = (
        plan.model.name.clone(),
        llmq_compiler::plan::group_digits(plan.model.param_count),
        plan.tokens_per_step(),
    );
    let peak_flops = plan.device.bf16_tflops * 1e12;
    let cpu_fallback = args.backend == BackendKind::Auto && args.model.is_none();
    let options = CudaOptions {
        graphs: !args.no_graphs,
        cudnn_attention: !args.own_attention,
        autotune_matmuls: !args.no_autotune,
        ..CudaOptions::default()
    };
    let backend = make_backend(args.backend, plan, options, cpu_fallback)?;
    if args.dump_step.is_none() {
        println!(
            "training {model} ({params} parameters) on {}: {} steps of {tokens} tokens, run directory {}",
            backend.name(),
            args.steps,
            args.out_dir.display()
        );
    }
    let opts = TrainerOptions {
        total_steps: args.steps,
        schedule,
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        checkpoint_dir: (!args.no_checkpoints).then(|| checkpoints.clone()),
        checkpoint_every: args.checkpoint_every,
        keep_last: args.keep,
        max_bad_steps: args.max_bad_steps,
        // MFU against the planned device's BF16 peak, on the GPU only.
        peak_flops: (backend.name() == "cuda").then_some(peak_flops),
    };
    let mut trainer = Trainer::new(backend, train, eval, opts);
    match &args.resume {
        Some(given) => {
            let path = match given {
                Some(path) => path.clone(),
                None => latest_checkpoint(&checkpoints)
                    .into_diagnostic()?
                    .ok_or_else(|| {
                        miette!("--resume: no checkpoint in {}", checkpoints.display())
                    })?,
            };
            trainer.resume(&path).into_diagnostic()?;
            println!("resumed from {} at step {}", path.display(), trainer.step);
        }
        None => match &args.init_from {
            Some(path) => {
                trainer.init_from(path).into_diagnostic()?;
                println!("weights from {}", path.display());
            }
            None => trainer.init_weights().into_diagnostic()?,
        },
    }
    if let Some(dir) = &args.dump_step {
        let loss = trainer.dump_step(dir).into_diagnostic()?;
        println!(
            "{model} on {}, one micro-batch of {}×{} tokens: loss {loss:.6}; weights, batch \
             and gradients written to {}",
            trainer.backend().name(),
            trainer.plan().options.batch,
            trainer.plan().options.seq,
            dir.display()
        );
        return Ok(());
    }
    // The run directory holds the log even when no checkpoint is written.
    std::fs::create_dir_all(&args.out_dir)
        .into_diagnostic()
        .wrap_err_with(|| format!("creating the run directory {}", args.out_dir.display()))?;
    let mut log = JsonLog::open(&args.out_dir.join("log.jsonl")).into_diagnostic()?;
    let bar = indicatif::ProgressBar::new(args.steps);
    bar.set_position(trainer.step);
    let mut log_error = None;
    let result = trainer.run(|r| {
        bar.set_position(r.step);
        // A hidden bar (output not a terminal) drops println: print the line ourselves.
        if bar.is_hidden() {
            println!("{}", format_record(r, args.steps));
        } else {
            bar.println(format_record(r, args.steps));
        }
        if let Err(e) = log.write(r) {
            log_error.get_or_insert(e);
        }
    });
    bar.finish_and_clear();
    result.into_diagnostic()?;
    if let Some(e) = log_error {
        return Err(e).into_diagnostic();
    }
    if args.profile {
        print_profile(trainer.backend())?;
    }
    let log = args.out_dir.join("log.jsonl");
    if args.no_checkpoints {
        println!("done (no checkpoints, as asked): log in {}", log.display());
    } else {
        println!(
            "done: checkpoints in {}, log in {}",
            checkpoints.display(),
            log.display()
        );
    }
    Ok(())
}

/// The flags that only shape a plan made from a spec (the step's shape and the recipe): given
/// with a plan file they would be silently ignored, so they are refused.
fn planning_flag_ids() -> Vec<String> {
    let recipe = RecipeArgs::augment_args(clap::Command::new("recipe"));
    let ids = recipe.get_arguments().map(|a| a.get_id().to_string());
    ["batch".to_string(), "seq".to_string()]
        .into_iter()
        .chain(ids)
        .collect()
}

/// Parses the command line; refuses planning flags next to a plan file.
fn parse_args() -> Result<Args> {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(plan) = args
        .model
        .as_ref()
        .filter(|m| m.extension().is_some_and(|e| e == "bin"))
    {
        let given: Vec<String> = planning_flag_ids()
            .iter()
            .filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !given.is_empty() {
            return Err(miette!(
                "{} shape a plan made from a spec, but {} is a plan file, which fixes them: plan \
                 again with `llmqc plan` (same flag names), or give llmq-run the spec",
                given.join(", "),
                plan.display()
            ));
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:?}");
            ExitCode::FAILURE
        }
    }
}
