//! Each memory pass on the tiny model: what it changes in the graph, as a snapshot of the
//! lines it removes and adds (node numbers dropped: new nodes are numbered after all others). The passes
//! run in the planner's order with a choice that uses every one of them, on the FP8 graph (the
//! first, `persist-weight-quants`, moves the weights' FP8 copies out of the micro-batch).

mod common;

use llmq_compiler::ir::Role;
use llmq_compiler::target::Precision;
use llmq_passes::compile_with_choice;
use llmq_passes::memory_plan::{MEMORY_PASSES, MemoryChoice};
use std::path::Path;

/// The graph's text after `pass`, without node numbers.
fn graph_after(pass: &str) -> Vec<String> {
    let choice = MemoryChoice {
        streamed: vec![Role::Weight, Role::MasterWeight, Role::Gradient],
        kept: None,
        recompute: vec![0],
        offload: vec![1],
        lm_head_chunk: Some(8),
        persist_weight_quants: true,
        release: Default::default(),
    };
    let mut opts = common::options(1, 8, 1, Precision::Fp8, 1 << 30);
    opts.dump_after = Some(pass.into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny.ron");
    let dump = compile_with_choice(&path, &opts, &choice)
        .unwrap()
        .report
        .dump
        .unwrap_or_else(|| panic!("no dump after {pass}"));
    common::dump_lines(&dump)
}

#[test]
fn each_memory_pass_on_the_tiny_model() {
    // The optimisation pipeline's last pass, then the memory passes in order.
    let mut before = graph_after("fusion");
    for pass in MEMORY_PASSES {
        let after = graph_after(pass);
        let diff = common::line_diff(&before, &after);
        assert!(!diff.is_empty(), "{pass} changed nothing");
        insta::assert_snapshot!(format!("memory__{}", pass.replace('-', "_")), diff);
        before = after;
    }
}
