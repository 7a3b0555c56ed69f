//! Weights quantised once per optimizer step (`persist-weight-quants`): the planner takes it
//! when several micro-batches would each make the same FP8 copies and the copies fit, the
//! copies are made only in the `quantize_weights` section, and training is bit-identical to
//! quantising in every micro-batch, also across a resume (which must make them again).

mod common;

use llmq_compiler::ir::Role;
use llmq_compiler::kernels::Op;
use llmq_compiler::plan::{Plan, QUANTIZE_WEIGHTS_SECTION};
use llmq_compiler::target::Precision;
use llmq_passes::memory_plan::MemoryChoice;
use llmq_passes::{compile, compile_with_choice};
use std::path::{Path, PathBuf};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny.ron")
}

fn has_quantize_section(plan: &Plan) -> bool {
    plan.section(QUANTIZE_WEIGHTS_SECTION).is_some()
}

/// Plans `precision` with `accum` micro-batches and room for everything.
fn roomy(accum: u32, precision: Precision) -> Plan {
    compile(&model(), &common::options(2, 16, accum, precision, 1 << 30))
        .unwrap()
        .plan
}

#[test]
fn the_planner_quantises_weights_once_per_step_only_when_it_pays() {
    let fp8_accumulating = roomy(2, Precision::Fp8);
    assert!(has_quantize_section(&fp8_accumulating));
    let decision = fp8_accumulating
        .memory
        .iter()
        .find(|d| d.class == "weights")
        .expect("the decision is listed with its price");
    assert!(decision.seconds_added < 0.0 && decision.bytes_saved < 0);
    // One micro-batch: nothing is made twice. BF16: no weight is quantised.
    assert!(!has_quantize_section(&roomy(1, Precision::Fp8)));
    assert!(!has_quantize_section(&roomy(2, Precision::Bf16)));
}

#[test]
fn weight_copies_are_made_only_in_their_section() {
    let plan = roomy(2, Precision::Fp8);
    let section = plan.section(QUANTIZE_WEIGHTS_SECTION).unwrap();
    assert_eq!(section.end as usize, plan.steps.len(), "it runs last");
    let quantises_weight = |s: &llmq_compiler::plan::Step| {
        let source = plan.tensor(s.node.inputs[0]).role;
        match s.node.op {
            Op::AbsMax(_) | Op::Quantize(_) => source == Role::Weight,
            Op::TransposeFp8(_) => source == Role::QuantizedWeight,
            _ => false,
        }
    };
    for (i, step) in plan.steps.iter().enumerate() {
        let inside = (section.start..section.end).contains(&(i as u32));
        assert_eq!(
            quantises_weight(step),
            inside,
            "step {i}: {}",
            step.node.op.name()
        );
    }
    // Every copy is persistent, and the micro-batches read them.
    let copies: Vec<_> = plan.steps[section.start as usize..]
        .iter()
        .flat_map(|s| s.node.outputs.iter().copied())
        .collect();
    assert!(
        copies
            .iter()
            .all(|&t| plan.tensor(t).role == Role::QuantizedWeight)
    );
    let read_in_micro_batches = plan.steps[..section.start as usize]
        .iter()
        .flat_map(|s| s.node.inputs.iter())
        .filter(|t| copies.contains(t))
        .count();
    assert!(read_in_micro_batches >= copies.len() / 2);
}

#[test]
fn quantising_once_per_step_trains_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let opts = common::options(2, 16, 2, Precision::Fp8, 1 << 30);
    let each = MemoryChoice::default();
    let once = MemoryChoice {
        persist_weight_quants: true,
        ..MemoryChoice::default()
    };
    let [each, once] = [each, once].map(|c| compile_with_choice(&model(), &opts, &c).unwrap().plan);
    assert!(!has_quantize_section(&each) && has_quantize_section(&once));
    assert_eq!(
        common::train_state(each, &data, 5),
        common::train_state(once, &data, 5)
    );
}

#[test]
fn resuming_a_plan_that_quantises_once_per_step_is_bit_exact() {
    let plan = roomy(2, Precision::Fp8);
    assert!(has_quantize_section(&plan));
    common::assert_resume_of_plan_is_bit_exact(plan);
}
