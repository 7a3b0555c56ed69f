//! The memory planner's mechanisms change where bytes live and when they move, never a value:
//! the tiny model trained through plans that recompute, offload activations and stream every
//! class of state gives the same losses and the same weights and optimizer state, bit for bit,
//! as the plain plan, on the CPU backend (which executes the plan over its arenas at the
//! planned offsets, so a wrong offset, lifetime or copy shows as a different number).

mod common;

use llmq_compiler::ir::Role;
use llmq_compiler::plan::{Arena, Plan, QUANTIZE_WEIGHTS_SECTION};
use llmq_compiler::target::Precision;
use llmq_passes::memory_plan::MemoryChoice;
use llmq_passes::stream_state::KeptBlocks;
use llmq_passes::{compile, compile_with_choice};
use std::path::{Path, PathBuf};

const STEPS: u64 = 5;

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny.ron")
}

/// Losses of `STEPS` optimizer steps and of an evaluation (in the plain plan the forward makes
/// it; in a plan with the fused head, the eval section), then the bytes of every weight, master
/// weight and moment.
fn train(plan: Plan, data: &str) -> (Vec<f32>, Vec<Vec<u8>>) {
    common::train_state(plan, data, STEPS)
}

fn every_state_role() -> Vec<Role> {
    vec![
        Role::Weight,
        Role::MasterWeight,
        Role::Gradient,
        Role::AdamM,
        Role::AdamV,
    ]
}

/// Asserts that the plan really uses the host arena for every state class and for
/// activations, and recomputes and chunks the LM head where asked.
fn assert_uses_every_mechanism(plan: &Plan, recomputes: bool, chunks_lm_head: bool) {
    let on_host = |role: Role| {
        plan.tensors
            .iter()
            .any(|t| t.role == role && plan.buffers[t.buffer.index()].arena == Arena::Host)
    };
    for role in every_state_role().into_iter().chain([Role::Saved]) {
        assert!(on_host(role), "no {} tensor on the host", role.name());
    }
    let recomputed = plan
        .tensors
        .iter()
        .any(|t| t.name.starts_with("recompute."));
    assert_eq!(recomputed, recomputes);
    let chunked = plan
        .steps
        .iter()
        .any(|s| s.node.op.name() == "classifier_cross_entropy");
    assert_eq!(chunked, chunks_lm_head);
    assert!(
        plan.steps
            .iter()
            .any(|s| s.stream != 0 && s.records.is_some())
    );
}

/// Asserts that the kept role's tensors of the kept blocks are on the device and the rest of
/// its tensors on the host.
fn assert_keeps_blocks(plan: &Plan, kept: KeptBlocks) {
    let of_role = plan.tensors.iter().filter(|t| t.role == kept.role);
    let (mut on_device, mut on_host) = (0, 0);
    for t in of_role {
        let device = plan.buffers[t.buffer.index()].arena == Arena::Device;
        let in_kept_block = t.layer.is_some_and(|l| l < kept.blocks);
        assert_eq!(device, in_kept_block, "{} is in the wrong arena", t.name);
        if device {
            on_device += 1;
        } else {
            on_host += 1;
        }
    }
    assert!(on_device > 0 && on_host > 0);
}

#[test]
fn every_mechanism_trains_bit_identically_to_the_plain_plan() {
    every_mechanism_trains_bit_identically(Precision::Bf16);
}

#[test]
fn every_mechanism_trains_bit_identically_in_fp8() {
    every_mechanism_trains_bit_identically(Precision::Fp8);
}

fn every_mechanism_trains_bit_identically(precision: Precision) {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    // Two micro-batches, so gradients accumulate through their host copies.
    let opts = common::options(2, 16, 2, precision, 1 << 30);
    // Plain: everything on the device, the weights' FP8 copies made in every micro-batch.
    let plain = compile_with_choice(&model(), &opts, &MemoryChoice::default())
        .unwrap()
        .plan;
    assert_eq!(plain.host_arena_bytes, 0);
    let reference = train(plain, &data);

    let mixed = MemoryChoice {
        streamed: every_state_role(),
        kept: None,
        recompute: vec![0],
        offload: vec![1],
        lm_head_chunk: Some(8),
        persist_weight_quants: precision == Precision::Fp8,
        release: Default::default(),
    };
    // The first block's second moments stay on the device, the rest stream.
    let recompute_and_offload = MemoryChoice {
        streamed: every_state_role(),
        kept: Some(KeptBlocks {
            role: Role::AdamV,
            blocks: 1,
        }),
        recompute: vec![0, 1],
        offload: vec![0, 1],
        lm_head_chunk: None,
        persist_weight_quants: precision == Precision::Fp8,
        release: Default::default(),
    };
    for choice in [mixed, recompute_and_offload] {
        let plan = compile_with_choice(&model(), &opts, &choice).unwrap().plan;
        assert_uses_every_mechanism(&plan, true, choice.lm_head_chunk.is_some());
        if let Some(kept) = choice.kept {
            assert_keeps_blocks(&plan, kept);
        }
        let quantizes_once = plan.section(QUANTIZE_WEIGHTS_SECTION).is_some();
        assert_eq!(quantizes_once, choice.persist_weight_quants);
        let (losses, state) = train(plan, &data);
        assert_eq!(losses, reference.0, "losses differ for {choice:?}");
        assert!(
            state == reference.1,
            "weights or optimizer state differ for {choice:?}"
        );
    }
}

#[test]
fn the_planner_under_a_tight_budget_moves_state_to_the_host_and_trains_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let roomy = common::options(2, 16, 1, Precision::Bf16, 1 << 30);
    let plain = compile(&model(), &roomy).unwrap().plan;
    // A third of the plain plan's arena: most of the state must leave the device.
    let tight_vram = llmq_compiler::target::RESERVE_BYTES + plain.device_arena_bytes / 3;
    let tight = common::options(2, 16, 1, Precision::Bf16, tight_vram);
    let plan = compile(&model(), &tight).unwrap().plan;
    assert!(
        llmq_compiler::plan::fits(&plan),
        "{}",
        llmq_compiler::plan::summary(&plan)
    );
    assert!(plan.device_arena_bytes < plain.device_arena_bytes / 3);
    let classes: Vec<&str> = plan.memory.iter().map(|d| d.class.as_str()).collect();
    let state = ["weights", "master", "adam m", "adam v", "gradients"];
    let streamed = state.iter().filter(|c| classes.contains(c)).count();
    assert!(streamed >= 3, "only {classes:?}");
    assert!(plan.host_arena_bytes > 0);
    assert_eq!(train(plan, &data), train(plain, &data));
}
