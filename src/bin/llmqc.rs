//! `llmqc`: the LLMQ-rs compiler. Plans a training step for a model and a GPU, ahead of time,
//! and shows or compares plans.

use clap::{Parser, Subcommand};
use llmq_compiler::plan::{
    Plan, ShowOptions, diff_plans, fits, group_digits, report_html, show_plan, summary,
};
use llmq_compiler::target::{DeviceProfile, device, format_bytes, known_devices, parse_size};
use llmq_passes::{CompileOptions, compile, compile_auto_batch, tradeoff_curve};
use miette::{Context, IntoDiagnostic, Result, miette};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[path = "../recipe_args.rs"]
mod recipe_args;
use recipe_args::RecipeArgs;

/// The LLMQ-rs compiler: decides, before anything runs, how a model trains on a GPU.
///
/// Examples:
///   llmqc plan models/qwen2.5-0.5b.ron --vram 40G --batch 8 -o plan.bin
///   llmqc plan models/qwen2.5-7b.ron --vram 16G --device rtx4060ti-16g --batch auto --explain
///   llmqc show plan.bin --detail 2 --layer 3
///   llmqc diff a.bin b.bin
#[derive(Parser)]
#[command(name = "llmqc", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan a training step: memory by category, peak against the budget, estimated speed.
    ///
    /// Exits with status 1 when the plan does not fit the budget, and says by how much.
    Plan(PlanArgs),
    /// Print a plan: the summary, then sections (--detail 1), steps (2) and buffers (3).
    Show {
        /// A plan written by `llmqc plan -o`.
        plan: PathBuf,
        /// 0: summary; 1: sections; 2: every step; 3: every buffer.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=3))]
        detail: u8,
        /// Only the steps and buffers of this block (layer index).
        #[arg(long)]
        layer: Option<u32>,
    },
    /// What changed between two plans: flags, memory per category, peak, step time, steps.
    Diff {
        /// The first plan.
        a: PathBuf,
        /// The second plan.
        b: PathBuf,
    },
    /// Draw a plan as one self-contained HTML page: device (and host) memory over the step,
    /// stacked by category against the budget, and the streams as a timeline.
    Report {
        /// A plan written by `llmqc plan -o`.
        plan: PathBuf,
        /// The page to write (`plan.html`).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List the known devices and their rates.
    Devices,
}

#[derive(clap::Args)]
struct PlanArgs {
    /// The model spec (a RON file under models/).
    spec: PathBuf,
    /// Device memory budget: 16G, 16GiB, 24000M. Default: the device's memory.
    #[arg(long, value_parser = parse_size)]
    vram: Option<u64>,
    /// Number of GPUs (only 1 for now).
    #[arg(long, default_value_t = 1)]
    gpus: u32,
    /// Sequences per micro-batch, or `auto`: the size with the highest estimated tokens/s that
    /// fits the budget.
    #[arg(long, default_value = "4", value_parser = parse_batch)]
    batch: Batch,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 1024)]
    seq: u64,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Device the estimates are for (`llmqc devices` lists them).
    #[arg(long, default_value = "h100", conflicts_with = "device_file")]
    device: String,
    /// Your own device profile, a RON file with the fields `llmqc devices` prints.
    #[arg(long)]
    device_file: Option<PathBuf>,
    /// Write the plan here.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the graph after this pass (or `autodiff`).
    #[arg(long)]
    dump_after: Option<String>,
    /// Do not run this pass (repeatable): to find the pass that made a plan wrong.
    #[arg(long = "skip-pass", value_name = "PASS")]
    skip_passes: Vec<String>,
    /// Print how long each compiler stage took.
    #[arg(long)]
    timings: bool,
    /// Print the trade-off curve: for budgets from a quarter to twice `--vram`, the memory
    /// planner's decisions and the estimated tokens/s.
    #[arg(long)]
    explain: bool,
}

/// `--batch`: a size, or the planner's choice.
#[derive(Clone, Copy, Debug)]
enum Batch {
    Fixed(u64),
    Auto,
}

/// The largest micro-batch `--batch auto` tries.
const MAX_AUTO_BATCH: u64 = 64;

/// Budgets of the trade-off curve, as multiples of `--vram`.
const CURVE_POINTS: [f64; 6] = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0];

fn parse_batch(s: &str) -> Result<Batch, String> {
    if s == "auto" {
        return Ok(Batch::Auto);
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Batch::Fixed(n)),
        _ => Err(format!(
            "`{s}` is not a batch size: give a positive number or `auto`"
        )),
    }
}

fn load_device(args: &PlanArgs) -> Result<DeviceProfile> {
    match &args.device_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .into_diagnostic()
                .wrap_err_with(|| format!("reading device file {}", path.display()))?;
            ron::from_str(&text).map_err(|e| miette!("{}: {e}", path.display()))
        }
        None => device(&args.device).ok_or_else(|| {
            let names: Vec<String> = known_devices().into_iter().map(|d| d.name).collect();
            miette!(
                "unknown device `{}`; known: {} (or give --device-file)",
                args.device,
                names.join(", ")
            )
        }),
    }
}

fn read_plan(path: &Path) -> Result<Plan> {
    let bytes = std::fs::read(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("reading {}", path.display()))?;
    Plan::from_bytes(&bytes).map_err(|e| miette!("{}: {e}", path.display()))
}

fn plan(args: PlanArgs) -> Result<ExitCode> {
    let device = load_device(&args)?;
    let card_bytes = (device.memory_gib * (1u64 << 30) as f64) as u64;
    let vram_bytes = args.vram.unwrap_or(card_bytes);
    if vram_bytes > card_bytes {
        eprintln!(
            "warning: --vram {} is more than the {} has ({}): the plan may not fit the card, \
             and the CUDA backend refuses at start a plan that does not",
            format_bytes(vram_bytes),
            device.name,
            format_bytes(card_bytes)
        );
    }
    let batch = match args.batch {
        Batch::Fixed(n) => n,
        Batch::Auto => 1,
    };
    let grad_accum = match args.batch {
        Batch::Fixed(n) => args.recipe.grad_accum_for(n).map_err(|e| miette!("{e}"))?,
        Batch::Auto => args.recipe.grad_accum,
    };
    let opts = CompileOptions {
        batch,
        seq: args.seq,
        grad_accum,
        precision: args.recipe.precision,
        grad_fp8: args.recipe.grad_fp8,
        vram_bytes,
        gpus: args.gpus,
        device,
        optimizer: args.recipe.optimizer(),
        dump_after: args.dump_after.clone(),
        skip_passes: args.skip_passes.clone(),
    };
    let start = Instant::now();
    let compiled = match args.batch {
        Batch::Fixed(_) => compile(&args.spec, &opts)?,
        // Doubling sizes: the first that does not divide a global batch ends the search.
        Batch::Auto => compile_auto_batch(&args.spec, &opts, MAX_AUTO_BATCH, |n| {
            args.recipe.grad_accum_for(n).ok()
        })?,
    };
    let elapsed = start.elapsed();
    if let Some(dump) = &compiled.report.dump {
        println!("{dump}");
    }
    print!("{}", summary(&compiled.plan));
    if args.timings {
        println!("\ncompiled in {:.1} ms", elapsed.as_secs_f64() * 1e3);
        for (pass, t) in &compiled.report.timings {
            println!("  {pass:<24} {:.1} ms", t.as_secs_f64() * 1e3);
        }
    }
    if args.explain {
        let opts = CompileOptions {
            batch: compiled.plan.options.batch,
            grad_accum: compiled.plan.options.grad_accum,
            dump_after: None,
            ..opts
        };
        explain(&args.spec, &opts)?;
    }
    if let Some(out) = &args.output {
        write_atomically(out, &compiled.plan.to_bytes())?;
        println!("wrote {}", out.display());
    }
    Ok(if fits(&compiled.plan) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints the budget → estimated tokens/s curve.
fn explain(spec: &Path, opts: &CompileOptions) -> Result<()> {
    let budgets: Vec<u64> = CURVE_POINTS
        .iter()
        .map(|f| (opts.vram_bytes as f64 * f) as u64)
        .collect();
    let start = Instant::now();
    let curve = tradeoff_curve(spec, opts, &budgets)?;
    println!(
        "\ntrade-off curve (batch {}, {:.2} s to compute):",
        opts.batch,
        start.elapsed().as_secs_f64()
    );
    println!(
        "  {:>11} {:>12} {:>11}  decisions",
        "budget", "tokens/s", "arena"
    );
    for p in curve {
        let speed = p.tokens_per_second.map_or("does not fit".to_string(), |t| {
            group_digits(t.round() as u64)
        });
        println!(
            "  {:>11} {:>12} {:>11}  {}",
            format_bytes(p.vram_bytes),
            speed,
            format_bytes(p.arena_bytes),
            p.decisions
        );
    }
    Ok(())
}

/// Writes a file through a temporary name, so a crash never leaves half a plan.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .into_diagnostic()
        .wrap_err_with(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .into_diagnostic()
        .wrap_err_with(|| format!("renaming to {}", path.display()))
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Plan(args) => plan(args),
        Command::Show {
            plan,
            detail,
            layer,
        } => read_plan(&plan).map(|p| {
            print!("{}", show_plan(&p, ShowOptions { detail, layer }));
            ExitCode::SUCCESS
        }),
        Command::Diff { a, b } => read_plan(&a).and_then(|pa| {
            let pb = read_plan(&b)?;
            let d = diff_plans(&pa, &pb);
            if d.is_empty() {
                println!("the plans are equivalent");
            } else {
                print!("{d}");
            }
            Ok(ExitCode::SUCCESS)
        }),
        Command::Report { plan, output } => read_plan(&plan).and_then(|p| {
            write_atomically(&output, report_html(&p).as_bytes())?;
            println!("wrote {}", output.display());
            Ok(ExitCode::SUCCESS)
        }),
        Command::Devices => {
            for d in known_devices() {
                println!("{}", ron::ser::to_string(&d).expect("profiles serialise"));
            }
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("{e:?}");
        ExitCode::from(2)
    })
}
