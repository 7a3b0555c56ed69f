//! The fusion pass on the tiny models: what it changes in the graph (a snapshot), how much, and
//! that a fused plan trains exactly as the unfused one, bit for bit.

mod common;

use llmq_compiler::plan::Plan;
use llmq_compiler::target::Precision;
use llmq_passes::{CompileOptions, compile};
use llmq_runtime::backend::cpu::CpuBackend;
use llmq_runtime::train::data::{DataLoader, TokenDataset, TokenVersion, write_token_file};
use llmq_runtime::train::schedule::{Schedule, ScheduleParams};
use llmq_runtime::train::tokenizer::bundled_train_eval;
use llmq_runtime::trainer::{Trainer, TrainerOptions};
use std::path::Path;

fn spec(model: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model)
}

fn options(skip_fusion: bool) -> CompileOptions {
    let mut opts = common::options(2, 16, 1, Precision::Bf16, 1 << 30);
    if skip_fusion {
        opts.skip_passes = vec!["fusion".into()];
    }
    opts
}

/// The graph's text after `pass`, with node numbers dropped (a rebuilt graph renumbers them).
fn graph_after(model: &str, pass: &str) -> Vec<String> {
    let mut opts = options(false);
    opts.dump_after = Some(pass.into());
    let dump = compile(&spec(model), &opts).unwrap().report.dump.unwrap();
    dump.lines()
        .map(|l| match l.split_once(' ') {
            Some((id, rest)) if id.starts_with("op") => rest.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

#[test]
fn fusion_snapshot_tiny() {
    let before = graph_after("tiny.ron", "autodiff");
    let after = graph_after("tiny.ron", "fusion");
    insta::assert_snapshot!("fusion__tiny", common::line_diff(&before, &after));
}

#[test]
fn every_residual_add_feeding_a_norm_is_fused() {
    for model in ["tiny.ron", "tiny-qwen3.ron"] {
        let plan = common::plan(model, &options(false));
        let count = |name: &str| plan.steps.iter().filter(|s| s.op.name() == name).count();
        let layers = plan.model.dims["layers"] as usize;
        // Two residual adds per block, each followed by a norm (the next block's, or the final
        // one); the first block's input norm reads the embedding and stays.
        assert_eq!(count("add_rms_norm"), 2 * layers, "{model}");
        let unfused = common::plan(model, &options(true));
        let norms = |p: &Plan| p.steps.iter().filter(|s| s.op.name() == "rms_norm").count();
        assert_eq!(norms(&unfused) - norms(&plan), 2 * layers, "{model}");
        assert!(plan.estimates.micro_batch_seconds < unfused.estimates.micro_batch_seconds);
    }
}

/// Five optimizer steps of a plan on the bundled corpus: the losses and every parameter's bytes.
fn train(plan: Plan, data: &str) -> (Vec<u32>, Vec<Vec<u8>>) {
    let (batch, seq) = (plan.options.batch as usize, plan.options.seq as usize);
    let loader = DataLoader::new(TokenDataset::open(&[data], 256).unwrap(), batch, seq, 3).unwrap();
    let params = ScheduleParams {
        lr: 3e-3,
        min_lr: 3e-4,
        warmup_steps: 1,
        decay_fraction: 0.2,
    };
    let opts = TrainerOptions {
        total_steps: 5,
        schedule: Schedule::parse("cosine", params).unwrap(),
        seed: 5,
        eval_every: 0,
        eval_batches: 0,
        checkpoint_dir: None,
        checkpoint_every: 0,
        keep_last: 0,
        max_bad_steps: 1,
        peak_flops: None,
    };
    let io = plan.io.clone();
    let mut t = Trainer::new(Box::new(CpuBackend::new(plan)), loader, None, opts);
    t.init_weights().unwrap();
    let losses = t
        .run(|_| {})
        .unwrap()
        .iter()
        .map(|r| r.loss.to_bits())
        .collect();
    let weights = io
        .params
        .iter()
        .map(|p| t.backend().read_bytes(p.weight).unwrap())
        .collect();
    (losses, weights)
}

#[test]
fn fused_plans_train_bit_for_bit_as_unfused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.bin");
    write_token_file(&data, &bundled_train_eval().train, TokenVersion::U16).unwrap();
    let data = data.to_string_lossy().into_owned();
    for model in ["tiny.ron", "tiny-qwen3.ron"] {
        let fused = train(common::plan(model, &options(false)), &data);
        let unfused = train(common::plan(model, &options(true)), &data);
        assert_eq!(fused.0, unfused.0, "{model}: losses differ");
        assert!(fused.1 == unfused.1, "{model}: weights differ");
    }
}
