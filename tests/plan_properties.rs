//! Properties every plan must have: buffers live at the same time never overlap, every step's
//! inputs were produced before it runs, plans are deterministic, and plan.bin rejects damage.

mod common;

use llmq_compiler::ir::Role;
use llmq_compiler::plan::{Arena, FormatError, Plan};
use llmq_compiler::target::Precision;
use llmq_passes::compile_with_choice;
use llmq_passes::memory_plan::MemoryChoice;
use proptest::prelude::*;

/// Every pair of buffers of one arena whose lifetimes overlap occupies disjoint bytes, and
/// every buffer lies within its arena.
fn assert_no_overlap(plan: &Plan) {
    for (arena, bytes) in [
        (Arena::Device, plan.device_arena_bytes),
        (Arena::Host, plan.host_arena_bytes),
    ] {
        let mut bufs: Vec<_> = plan
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.size > 0 && b.arena == arena)
            .collect();
        bufs.sort_by_key(|(_, b)| b.offset);
        for (i, (ia, a)) in bufs.iter().enumerate() {
            assert!(
                a.offset + a.size <= bytes,
                "buffer {ia} past the {arena:?} arena"
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
}

/// With copies on their own streams, the GPU may run steps of different streams in any order
/// the events allow. Every two steps of a section that touch overlapping bytes of one arena,
/// one of them writing, must then be ordered by stream order and events (happens-before,
/// computed with vector clocks), the same way as in the linear order the CPU runs. Only
/// copies touch the host arena, and every awaited event is recorded by an earlier step.
fn assert_streams_keep_the_linear_order(plan: &Plan) {
    let streams = plan.streams.len();
    let mut recorder = vec![None; plan.events as usize];
    for (s, step) in plan.steps.iter().enumerate() {
        if let Some(e) = step.records {
            recorder[e as usize] = Some(s);
        }
        let touches_host = step
            .node
            .inputs
            .iter()
            .chain(&step.node.outputs)
            .any(|&t| plan.buffer_of(t).arena == Arena::Host);
        assert!(
            !touches_host || step.node.op.name() == "copy",
            "step {s} ({}) touches the host arena",
            step.node.op
        );
    }
    for section in &plan.sections {
        let range = section.start as usize..section.end as usize;
        // clock[s][k]: the last step of stream k known to have finished when s starts.
        let mut clock: Vec<Vec<i64>> = vec![vec![-1; streams]; plan.steps.len()];
        let mut last_on: Vec<Option<usize>> = vec![None; streams];
        // Accesses so far: (arena, start, end, step, writes).
        let mut accesses: Vec<(Arena, u64, u64, usize, bool)> = Vec::new();
        for s in range.clone() {
            let step = &plan.steps[s];
            let k = step.stream as usize;
            let mut c = last_on[k].map_or(vec![-1; streams], |p| clock[p].clone());
            for &e in &step.waits {
                let r = recorder[e as usize].expect("an awaited event is recorded");
                assert!(
                    r < s && range.contains(&r),
                    "step {s} waits for a later event"
                );
                for (x, y) in c.iter_mut().zip(&clock[r]) {
                    *x = (*x).max(*y);
                }
            }
            c[k] = s as i64;
            clock[s] = c;
            last_on[k] = Some(s);
            let reads = step.node.inputs.iter().map(|&t| (t, false));
            let writes = step.node.outputs.iter().map(|&t| (t, true));
            let mine: Vec<_> = reads
                .chain(writes)
                .map(|(t, w)| {
                    let b = plan.buffer_of(t);
                    (b.arena, b.offset, b.offset + plan.tensor(t).ty.bytes(), w)
                })
                .collect();
            for &(arena, start, end, write) in &mine {
                for &(a_arena, a_start, a_end, a, a_write) in &accesses {
                    let conflict = arena == a_arena && start < a_end && a_start < end;
                    if conflict && (write || a_write) && a != s {
                        let a_stream = plan.steps[a].stream as usize;
                        assert!(
                            clock[s][a_stream] >= a as i64,
                            "step {s} ({}) may run before step {a} ({}): they share bytes",
                            step.node.op,
                            plan.steps[a].node.op
                        );
                    }
                }
            }
            accesses.extend(mine.into_iter().map(|(ar, st, en, w)| (ar, st, en, s, w)));
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
        for t in &step.node.inputs {
            assert!(
                written[t.index()],
                "step {s} ({}) reads {t} `{}` before any step writes it",
                step.node.op,
                plan.tensor(*t).name
            );
        }
        for t in &step.node.outputs {
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
        assert_streams_keep_the_linear_order(&plan);
    }

    #[test]
    fn plans_with_every_memory_mechanism_are_sound(recompute in 0u32..3, offload in 0u32..3,
                                                   streamed in prop::sample::subsequence(
                                                       vec![Role::Weight, Role::MasterWeight, Role::Gradient, Role::AdamM, Role::AdamV], 0..=5),
                                                   accum in 1u32..3) {
        let choice = MemoryChoice {
            streamed,
            recompute: (0..recompute).collect(),
            offload: (2 - offload.min(2)..2).collect(),
            lm_head_chunk: (recompute == 1).then_some(8),
            ..MemoryChoice::default()
        };
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2.ron");
        let opts = common::options(2, 16, accum, Precision::Bf16, 1 << 30);
        let plan = compile_with_choice(&path, &opts, &choice).unwrap().plan;
        assert_no_overlap(&plan);
        assert_inputs_produced_first(&plan);
        assert_streams_keep_the_linear_order(&plan);
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
