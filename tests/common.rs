//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use llmq_compiler::autodiff::OptimizerOptions;
use llmq_compiler::plan::Plan;
use llmq_compiler::target::{Precision, device};
use llmq_passes::{CompileOptions, compile};
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
