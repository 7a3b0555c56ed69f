//! The per-pass snapshot: the tiny model's training graph just before a pass and just after
//! it (the passes before it run first), as a unified diff of the text dumps; for a forward
//! pass, the forward graph before and after it.
#![allow(dead_code)] // each test crate uses the helpers of its kind of pass

use llmq_compiler::autodiff::OptimizerOptions;
use llmq_compiler::ir::{Graph, write_graph};
use llmq_compiler::kernels::DType;
use llmq_compiler::pass::{Pass, run_passes};
use llmq_compiler::target::{Precision, device};
use llmq_passes::{
    CompileOptions, HorizontalFusion, forward_graph, pass_context, pipeline, train_graph,
};
use std::path::Path;

/// Options for the tiny graphs of pass tests: 2 sequences of 8 tokens.
pub fn options(precision: Precision) -> CompileOptions {
    CompileOptions {
        batch: 2,
        seq: 8,
        grad_accum: 1,
        precision,
        grad_fp8: DType::F8E4M3,
        vram_bytes: 1 << 30,
        gpus: 1,
        device: device("h100").unwrap(),
        optimizer: OptimizerOptions::default(),
        dump_after: None,
        skip_passes: Vec::new(),
    }
}

/// The graph of `model` (a file of `models/`) after the pipeline's passes up to and including
/// `pass`, and the unified diff (one line of context) that `pass` made.
pub fn pass_diff(model: &str, pass: &str, opts: &CompileOptions) -> (Graph, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(model);
    let mut graph = train_graph(&path, opts).unwrap().graph;
    let ctx = pass_context(opts);
    let passes = pipeline(&ctx);
    let at = passes
        .iter()
        .position(|p| p.name() == pass)
        .unwrap_or_else(|| panic!("{pass} is not in the pipeline"));
    run_passes(&mut graph, &passes[..at], &ctx, None).unwrap();
    let before = write_graph(&graph);
    run_passes(&mut graph, &passes[at..=at], &ctx, None).unwrap();
    let after = write_graph(&graph);
    (graph, unified_diff(&before, &after))
}

/// The forward graph of `model` after horizontal fusion, and the unified diff it made.
pub fn forward_diff(model: &str) -> (Graph, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(model);
    let opts = options(Precision::Bf16);
    let mut graph = forward_graph(&path, &opts).unwrap().graph;
    let before = write_graph(&graph);
    let passes: [&dyn Pass; 1] = [&HorizontalFusion];
    run_passes(&mut graph, &passes, &pass_context(&opts), None).unwrap();
    let after = write_graph(&graph);
    (graph, unified_diff(&before, &after))
}

/// The unified diff of two graph dumps, one line of context, as the snapshots keep it.
fn unified_diff(before: &str, after: &str) -> String {
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(1)
        .header("before", "after")
        .to_string()
}
