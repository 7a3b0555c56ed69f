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

/// Writes the bundled corpus's training split as a token file in `dir`; returns its path.
pub fn corpus(dir: &Path) -> String {
    let path = dir.join("train.bin");
    write_token_file(&path, &bundled_train_eval().train, TokenVersion::U16).unwrap();
    path.to_string_lossy().into_owned()
}

/// A CPU trainer of `plan` on the token file `data`: seed 99, cosine schedule, no eval.
pub fn trainer(plan: Plan, data: &str, steps: u64, checkpoints: Option<&Path>) -> Trainer {
    let (batch, seq) = (plan.options.batch as usize, plan.options.seq as usize);
    let loader = DataLoader::new(TokenDataset::open(&[data], 256).unwrap(), batch, seq, 7).unwrap();
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
        eval_batches: 0,
        checkpoint_dir: checkpoints.map(Path::to_path_buf),
        checkpoint_every: 10,
        keep_last: 0,
        max_bad_steps: 3,
        peak_flops: None,
    };
    Trainer::new(Box::new(CpuBackend::new(plan)), loader, None, opts)
}
