//! The fusion pass on the tiny models: what it changes in the graph (a snapshot, in BF16 and in
//! FP8), how much, and that a fused plan trains exactly as the unfused one, bit for bit, in
//! both precisions (in FP8 that checks the abs-maxes fused into their producers: a wrong one
//! changes an FP8 scale and the losses; in both, the residual adds fused into the norms and
//! their backward).

mod common;

use llmq_compiler::ir::Phase;
use llmq_compiler::plan::Plan;
use llmq_compiler::target::Precision;
use llmq_passes::memory_plan::MemoryChoice;
use llmq_passes::{CompileOptions, compile, compile_with_choice};
use std::path::Path;

fn spec(model: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model)
}

fn options(skip_fusion: bool) -> CompileOptions {
    precision_options(Precision::Bf16, skip_fusion)
}

fn precision_options(precision: Precision, skip_fusion: bool) -> CompileOptions {
    let mut opts = common::options(2, 16, 1, precision, 1 << 30);
    if skip_fusion {
        opts.skip_passes = vec!["fusion".into()];
    }
    opts
}

/// The graph's text after `pass`, with node numbers dropped (a rebuilt graph renumbers them).
fn graph_after(model: &str, pass: &str) -> Vec<String> {
    graph_after_in(Precision::Bf16, model, pass)
}

fn graph_after_in(precision: Precision, model: &str, pass: &str) -> Vec<String> {
    let mut opts = precision_options(precision, false);
    opts.dump_after = Some(pass.into());
    common::dump_lines(&compile(&spec(model), &opts).unwrap().report.dump.unwrap())
}

#[test]
fn fusion_snapshot_tiny() {
    let before = graph_after("tiny.ron", "autodiff");
    let after = graph_after("tiny.ron", "fusion");
    insta::assert_snapshot!("fusion__tiny", common::line_diff(&before, &after));
}

/// FP8: the pass after the FP8 recipe's, so the diff shows the abs-maxes folded into the
/// norms, swiglu and its backward, and split_rope's backward.
#[test]
fn fusion_snapshot_tiny_fp8() {
    let before = graph_after_in(Precision::Fp8, "tiny.ron", "stochastic_rounding");
    let after = graph_after_in(Precision::Fp8, "tiny.ron", "fusion");
    insta::assert_snapshot!("fusion__tiny_fp8", common::line_diff(&before, &after));
}

#[test]
fn every_abs_max_of_a_norm_swiglu_or_split_rope_output_is_fused_forward_and_backward() {
    for model in ["tiny.ron", "tiny-qwen3.ron"] {
        let plan = common::plan(model, &precision_options(Precision::Fp8, false));
        let unfused = common::plan(model, &precision_options(Precision::Fp8, true));
        let count =
            |p: &Plan, name: &str| p.steps.iter().filter(|s| s.node.op.name() == name).count();
        let layers = plan.model.dims["layers"] as usize;
        // Per block: the input norm (fused with the residual add but in the first block) and
        // the post-attention norm feed q/k/v and gate/up; swiglu feeds down; swiglu's backward
        // feeds the packed gate|up projection's backward, one abs-max of the packed gradient;
        // the residual gradient the norms' backward adds into feeds the output projections'
        // backward (all but the first block's input norm's, which the embedding reads).
        assert_eq!(count(&plan, "rms_norm_abs_max"), 1, "{model}");
        assert_eq!(
            count(&plan, "add_rms_norm_abs_max"),
            2 * layers - 1,
            "{model}"
        );
        assert_eq!(count(&plan, "swiglu_abs_max"), layers, "{model}");
        assert_eq!(count(&plan, "swiglu_backward_abs_max"), layers, "{model}");
        // The packed q|k|v gradient feeds the q/k/v projection's backward: written by
        // split_rope_backward in the tiny Llama, by a concat after Qwen3's q/k norms.
        let rope_fused = count(&plan, "split_rope_backward_abs_max");
        let with_split_rope = if model == "tiny.ron" { layers } else { 0 };
        assert_eq!(rope_fused, with_split_rope, "{model}");
        assert_eq!(
            count(&plan, "rms_norm_backward_add_abs_max"),
            2 * layers - 1,
            "{model}"
        );
        assert_eq!(
            count(&unfused, "abs_max") - count(&plan, "abs_max"),
            6 * layers - 1 + rope_fused,
            "{model}"
        );
        // No abs_max is left reading what a norm or swiglu wrote.
        for step in plan.steps.iter().filter(|s| s.node.op.name() == "abs_max") {
            let writer = plan
                .steps
                .iter()
                .find(|w| w.node.outputs.contains(&step.node.inputs[0]))
                .map(|w| w.node.op.name());
            assert!(
                !matches!(
                    writer,
                    Some(
                        "rms_norm"
                            | "add_rms_norm"
                            | "swiglu"
                            | "swiglu_backward"
                            | "split_rope_backward"
                            | "rms_norm_backward_add"
                    )
                ),
                "{model}: abs_max of {writer:?} left"
            );
        }
        assert!(plan.estimates.micro_batch_seconds < unfused.estimates.micro_batch_seconds);
    }
}

/// A recomputed block runs its fused ops again, abs-maxes included, so the backward's
/// transposed quantisations read recomputed abs-maxes (that they are the forward's bit for bit
/// is `tests/memory_equivalence.rs`'s FP8 case, which recomputes every block).
#[test]
fn recomputed_blocks_recompute_their_fused_abs_maxes() {
    let choice = MemoryChoice {
        recompute: vec![0, 1],
        ..MemoryChoice::default()
    };
    let opts = precision_options(Precision::Fp8, false);
    let plan = compile_with_choice(&spec("tiny.ron"), &opts, &choice)
        .unwrap()
        .plan;
    for name in ["add_rms_norm_abs_max", "swiglu_abs_max"] {
        let recomputed = plan
            .steps
            .iter()
            .filter(|s| s.node.phase == Phase::Backward && s.node.op.name() == name)
            .count();
        assert!(recomputed > 0, "no {name} recomputed");
    }
}

#[test]
fn every_residual_add_feeding_a_norm_is_fused() {
    for model in ["tiny.ron", "tiny-qwen3.ron"] {
        let plan = common::plan(model, &options(false));
        let count = |name: &str| {
            plan.steps
                .iter()
                .filter(|s| s.node.op.name() == name)
                .count()
        };
        let layers = plan.model.dims["layers"] as usize;
        // Two residual adds per block, each followed by a norm (the next block's, or the final
        // one); the first block's input norm reads the embedding and stays.
        assert_eq!(count("add_rms_norm"), 2 * layers, "{model}");
        let unfused = common::plan(model, &options(true));
        let norms = |p: &Plan| {
            p.steps
                .iter()
                .filter(|s| s.node.op.name() == "rms_norm")
                .count()
        };
        assert_eq!(norms(&unfused) - norms(&plan), 2 * layers, "{model}");
        assert!(plan.estimates.micro_batch_seconds < unfused.estimates.micro_batch_seconds);
    }
}

/// Every norm backward whose `dx` joins the residual stream's gradient adds it in itself, two
/// per block, accumulating its weight's gradient as before; no `add` is left reading a norm
/// backward's `dx` (the final norm's and Qwen3's q/k norms' are read by no add).
#[test]
fn every_norm_backward_adds_into_the_residual_gradient() {
    for model in ["tiny.ron", "tiny-qwen3.ron"] {
        for precision in [Precision::Bf16, Precision::Fp8] {
            let plan = common::plan(model, &precision_options(precision, false));
            let layers = plan.model.dims["layers"] as usize;
            let fused: Vec<_> = plan
                .steps
                .iter()
                .filter(|s| s.node.op.name().starts_with("rms_norm_backward_add"))
                .collect();
            assert_eq!(fused.len(), 2 * layers, "{model} {precision:?}");
            for step in fused {
                assert_eq!(step.node.accumulate[..2], [false, true], "{model}");
            }
            for add in plan.steps.iter().filter(|s| s.node.op.name() == "add") {
                for &t in &add.node.inputs {
                    let writer = plan.steps.iter().find(|w| w.node.outputs.contains(&t));
                    let writer = writer.map(|w| w.node.op.name());
                    assert_ne!(writer, Some("rms_norm_backward"), "{model} {precision:?}");
                }
            }
        }
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
    for precision in [Precision::Bf16, Precision::Fp8] {
        for model in ["tiny.ron", "tiny-qwen3.ron"] {
            let fused = train(
                common::plan(model, &precision_options(precision, false)),
                &data,
            );
            let unfused = train(
                common::plan(model, &precision_options(precision, true)),
                &data,
            );
            assert_eq!(fused.0, unfused.0, "{model} {precision:?}: losses differ");
            assert!(
                fused.1 == unfused.1,
                "{model} {precision:?}: weights differ"
            );
        }
    }
}
