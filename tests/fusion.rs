//! The fusion pass on the tiny models: what it changes in the graph (a snapshot), how much, and
//! that a fused plan trains exactly as the unfused one, bit for bit.

mod common;

use llmq_compiler::plan::Plan;
use llmq_compiler::target::Precision;
use llmq_passes::{CompileOptions, compile};
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
    common::dump_lines(&compile(&spec(model), &opts).unwrap().report.dump.unwrap())
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

/// Five optimizer steps: the losses' bits, then every parameter's state bytes.
fn train(plan: Plan, data: &str) -> (Vec<u32>, Vec<Vec<u8>>) {
    let (losses, state) = common::train_state(plan, data, 5);
    (losses.iter().map(|l| l.to_bits()).collect(), state)
}

#[test]
fn fused_plans_train_bit_for_bit_as_unfused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    for model in ["tiny.ron", "tiny-qwen3.ron"] {
        let fused = train(common::plan(model, &options(false)), &data);
        let unfused = train(common::plan(model, &options(true)), &data);
        assert_eq!(fused.0, unfused.0, "{model}: losses differ");
        assert!(fused.1 == unfused.1, "{model}: weights differ");
    }
}
