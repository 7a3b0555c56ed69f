//! Properties every plan must have: buffers live at the same time never overlap, every step's
//! inputs were produced before it runs, plans are deterministic, and plan.bin rejects damage.

mod common;

use llmq_compiler::ir::Role;
use llmq_compiler::plan::{FormatError, Plan};
use llmq_compiler::target::Precision;
use proptest::prelude::*;

/// Every pair of buffers whose lifetimes overlap occupies disjoint bytes.
fn assert_no_overlap(plan: &Plan) {
    let mut bufs: Vec<_> = plan
        .buffers
        .iter()
        .enumerate()
        .filter(|(_, b)| b.size > 0)
        .collect();
    bufs.sort_by_key(|(_, b)| b.offset);
    for (i, (ia, a)) in bufs.iter().enumerate() {
        assert!(
            a.offset + a.size <= plan.device_arena_bytes,
            "buffer {ia} past the arena"
        );
        for (ib, b) in &bufs[i + 1..] {
            if b.offset >= a.offset + a.size {
                break;
            }
            let live_together = a.first_step <= b.last_step && b.first_step <= a.last_step;
            assert!(
                !live_together,
                "buffers {ia} and {ib} overlap in bytes and in time: {a:?} {b:?}"
            );
        }
    }
}

/// Every activation a step reads was written by an earlier step; state and inputs exist
/// before the step (written by the host or an earlier step).
fn assert_inputs_produced_first(plan: &Plan) {
    let mut written = vec![false; plan.tensors.len()];
    for (i, t) in plan.tensors.iter().enumerate() {
        written[i] = t.role.is_persistent();
    }
    for (s, step) in plan.steps.iter().enumerate() {
        for t in &step.inputs {
            assert!(
                written[t.index()],
                "step {s} ({}) reads {t} `{}` before any step writes it",
                step.op,
                plan.tensor(*t).name
            );
        }
        for t in &step.outputs {
            written[t.index()] = true;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn tiny_plans_are_sound(batch in 1u64..5, seq in prop::sample::select(vec![8u64, 16, 32]), accum in 1u32..3,
                            model in prop::sample::select(vec!["tiny.ron", "tiny-qwen2.ron", "tiny-qwen3.ron"]),
                            precision in prop::sample::select(vec![Precision::Fp8, Precision::Bf16])) {
        let plan = common::plan(model, &common::options(batch, seq, accum, precision, 1 << 30));
        assert_no_overlap(&plan);
        assert_inputs_produced_first(&plan);
    }
}

#[test]
fn a_real_model_plan_is_sound_and_packs_to_its_live_peak() {
    for precision in [Precision::Fp8, Precision::Bf16] {
        let plan = common::plan(
            "qwen2.5-0.5b.ron",
            &common::options(2, 256, 1, precision, 80 << 30),
        );
        assert_no_overlap(&plan);
        assert_inputs_produced_first(&plan);
        // The allocator may waste a little to fragmentation, never more than 10% of the peak.
        let live = plan.estimates.peak_live_bytes as f64;
        assert!(
            (plan.device_arena_bytes as f64) < 1.1 * live,
            "{precision}: arena {} vs live peak {live}",
            plan.device_arena_bytes
        );
        assert!(plan.tensors.iter().any(|t| t.role == Role::Saved));
    }
}

#[test]
fn the_same_spec_and_flags_give_the_same_bytes() {
    for precision in [Precision::Fp8, Precision::Bf16] {
        let opts = common::options(2, 64, 2, precision, 1 << 30);
        let a = common::plan("tiny-qwen3.ron", &opts).to_bytes();
        let b = common::plan("tiny-qwen3.ron", &opts).to_bytes();
        assert_eq!(a, b, "{precision}");
    }
    let opts = common::options(2, 64, 2, Precision::Bf16, 1 << 30);
    let a = common::plan("tiny-qwen3.ron", &opts).to_bytes();
    let other = common::plan(
        "tiny-qwen3.ron",
        &common::options(4, 64, 2, Precision::Bf16, 1 << 30),
    )
    .to_bytes();
    assert_ne!(a, other, "a different batch must change the plan");
}

#[test]
fn damaged_plan_files_are_refused_with_a_reason() {
    let plan = common::plan(
        "tiny.ron",
        &common::options(1, 8, 1, Precision::Bf16, 1 << 30),
    );
    let bytes = plan.to_bytes();
    assert_eq!(Plan::from_bytes(&bytes).unwrap(), plan);
    assert!(matches!(
        Plan::from_bytes(&bytes[..bytes.len() - 10]),
        Err(FormatError::Truncated { .. })
    ));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    assert!(matches!(
        Plan::from_bytes(&flipped),
        Err(FormatError::Checksum { .. })
    ));
    let mut version = bytes.clone();
    version[8] = 99;
    assert!(matches!(
        Plan::from_bytes(&version),
        Err(FormatError::Version { found: 99, .. })
    ));
    assert!(matches!(
        Plan::from_bytes(b"not a plan at all"),
        Err(FormatError::BadMagic)
    ));
}
