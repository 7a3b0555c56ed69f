//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use llmq_compiler::autodiff::OptimizerOptions;
use llmq_compiler::kernels::DType;
use llmq_compiler::plan::Plan;
use llmq_compiler::target::{Precision, device};
use llmq_passes::{CompileOptions, compile};
use llmq_runtime::backend::cpu::CpuBackend;
use llmq_runtime::train::data::{DataLoader, TokenDataset, TokenVersion, write_token_file};
use llmq_runtime::train::schedule::{Schedule, ScheduleParams};
use llmq_runtime::train::tokenizer::bundled_train_eval;
use llmq_runtime::trainer::{Trainer, TrainerOptions};
use std::path::Path;

/// Options for planning `batch × seq` in `precision` on an H100 with `vram` bytes.
pub fn options(
    batch: u64,
    seq: u64,
    grad_accum: u32,
    precision: Precision,
    vram: u64,
) -> CompileOptions {
    CompileOptions {
        batch,
        seq,
        grad_accum,
        precision,
        grad_fp8: DType::F8E4M3,
        vram_bytes: vram,
        gpus: 1,
        device: device("h100").unwrap(),
        optimizer: OptimizerOptions::default(),
        dump_after: None,
        skip_passes: Vec::new(),
    }
}

/// Plans a model file of `models/`.
pub fn plan(model: &str, opts: &CompileOptions) -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model);
    compile(&path, opts)
        .unwrap_or_else(|e| panic!("planning {model}: {e}"))
        .plan
}

/// Lines only in `before` (`-`) and only in `after` (`+`), each side in its own order: what a
/// pass changed in a graph dump, for snapshots.
pub fn line_diff(before: &[String], after: &[String]) -> String {
    let mut out = String::new();
    for l in before.iter().filter(|l| !after.contains(l)) {
        out += &format!("- {l}\n");
    }
    for l in after.iter().filter(|l| !before.contains(l)) {
        out += &format!("+ {l}\n");
    }
    out
}

/// The lines of a graph dump with node numbers dropped (passes that rebuild the graph
/// renumber its nodes), for before/after diffs.
pub fn dump_lines(dump: &str) -> Vec<String> {
    dump.lines()
        .map(|l| match l.split_once(' ') {
            Some((id, rest)) if id.starts_with("op") => rest.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// Writes the bundled corpus's training split as a token file in `dir`; returns its path.
pub fn corpus(dir: &Path) -> String {
    let path = dir.join("train.bin");
    write_token_file(&path, &bundled_train_eval().train, TokenVersion::U16).unwrap();
    path.to_string_lossy().into_owned()
}

/// A CPU trainer of `plan` on the token file `data`: seed 99, cosine schedule, no eval.
pub fn trainer(plan: Plan, data: &str, steps: u64, checkpoints: Option<&Path>) -> Trainer {
    trainer_on(plan, data, 256, None, steps, checkpoints)
}

/// [`trainer`] on token files of a `vocab`-token vocabulary, evaluating one micro-batch of
/// `eval` (from its start) when given.
pub fn trainer_on(
    plan: Plan,
    data: &str,
    vocab: u32,
    eval: Option<&str>,
    steps: u64,
    checkpoints: Option<&Path>,
) -> Trainer {
    let (batch, seq) = (plan.options.batch as usize, plan.options.seq as usize);
    let loader = |path: &str, seed| {
        DataLoader::new(
            TokenDataset::open(&[path], vocab).unwrap(),
            batch,
            seq,
            seed,
        )
        .unwrap()
    };
    let params = ScheduleParams {
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 10,
        decay_fraction: 0.2,
    };
    let opts = TrainerOptions {
        total_steps: steps,
        schedule: Schedule::parse("cosine", params).unwrap(),
        seed: 99,
        eval_every: 0,
        eval_batches: 1,
        checkpoint_dir: checkpoints.map(Path::to_path_buf),
        checkpoint_every: 10,
        keep_last: 0,
        max_bad_steps: 3,
        peak_flops: None,
    };
    // Evaluation only when a test calls `evaluate`: on `eval` from its start when given, else
    // on batches of the training data drawn with another seed.
    let eval = match eval {
        Some(path) => loader(path, 7),
        None => loader(data, 8),
    };
    Trainer::new(
        Box::new(CpuBackend::new(plan)),
        loader(data, 7),
        Some(eval),
        opts,
    )
}

fn all_state(t: &mut Trainer) -> Vec<Vec<u8>> {
    let params = t.plan().io.params.clone();
    let mut out = Vec::new();
    for p in params {
        for id in [p.weight, p.m, p.v].into_iter().chain(p.master) {
            out.push(t.backend().read_bytes(id).unwrap());
        }
    }
    out
}

/// Trains `model` 20 steps in `precision` (2 micro-batches a step), checkpointing at step 10,
/// then resumes from that checkpoint: the last 10 losses and all the state must be identical.
pub fn assert_resume_is_bit_exact(model: &str, precision: Precision) {
    assert_resume_of_plan_is_bit_exact(plan(model, &options(2, 32, 2, precision, 1 << 30)));
}

/// [`assert_resume_is_bit_exact`] for a given plan.
pub fn assert_resume_of_plan_is_bit_exact(plan: Plan) {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path());
    let ckpt = dir.path().join("ckpt");

    let mut straight = trainer(plan.clone(), &data, 20, Some(&ckpt));
    straight.init_weights().unwrap();
    let losses: Vec<f32> = straight
        .run(|_| {})
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect();

    let mut resumed = trainer(plan, &data, 20, None);
    resumed.resume(&ckpt.join("step-000010")).unwrap();
    assert_eq!(resumed.step, 10);
    let tail: Vec<f32> = resumed
        .run(|_| {})
        .unwrap()
        .iter()
        .map(|r| r.loss)
        .collect();
    assert_eq!(tail, losses[10..], "losses after resuming differ");
    assert!(
        all_state(&mut straight) == all_state(&mut resumed),
        "weights or optimizer state differ after resuming"
    );
}

/// Trains `plan` for `steps` optimizer steps with [`trainer`]; returns the losses and then one
/// evaluation's, then the bytes of every parameter's weight, moments and master copy (the state
/// plan-equivalence tests compare).
pub fn train_state(plan: Plan, data: &str, steps: u64) -> (Vec<f32>, Vec<Vec<u8>>) {
    let params = plan.io.params.clone();
    let mut t = trainer(plan, data, steps, None);
    t.init_weights().unwrap();
    let mut losses: Vec<f32> = t.run(|_| {}).unwrap().iter().map(|r| r.loss).collect();
    losses.extend(t.evaluate().unwrap());
    let mut state = Vec::new();
    for p in params {
        for id in [p.weight, p.m, p.v].into_iter().chain(p.master) {
            state.push(t.backend().read_bytes(id).unwrap());
        }
    }
    (losses, state)
}
