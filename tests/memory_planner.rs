//! The memory planner on the real models: what LLMQ's users pick by hand on small cards, the
//! compiler picks from the budget, and a model with room to spare is left alone.

mod common;

use llmq_compiler::autodiff::MasterWeights;
use llmq_compiler::ir::Role;
use llmq_compiler::lower::Release;
use llmq_compiler::plan::{Arena, EVAL_SECTION, Plan, fits, memory_profile, summary};
use llmq_compiler::target::{Precision, device, parse_size};
use llmq_passes::memory_plan::MemoryChoice;
use llmq_passes::{CompileOptions, compile, compile_with_choice, tradeoff_curve};
use std::path::Path;
use std::time::{Duration, Instant};

fn options(card: &str, vram: &str) -> CompileOptions {
    CompileOptions {
        device: device(card).unwrap(),
        ..common::options(4, 1024, 1, Precision::Bf16, parse_size(vram).unwrap())
    }
}

/// The decisions as `class blocks action` lines, for messages and checks.
fn decisions(plan: &Plan) -> Vec<String> {
    plan.memory
        .iter()
        .map(|d| format!("{} {} {}", d.class, d.blocks, d.action))
        .collect()
}

/// Fits, streams every class of state from the host, relieves activations and chunks the LM
/// head: the decisions LLMQ needs on consumer cards.
fn assert_fits_like_llmq(plan: &Plan) {
    let text = summary(plan);
    assert!(fits(plan), "{text}");
    let d = decisions(plan);
    for class in [
        "weights",
        "master",
        "adam m",
        "adam v",
        "gradients",
        "lm head",
    ] {
        assert!(
            d.iter().any(|l| l.starts_with(class)),
            "no {class} decision: {text}"
        );
    }
    assert!(
        d.iter().any(|l| l.starts_with("activations")),
        "activations neither recomputed nor offloaded: {text}"
    );
    let streamed = plan
        .steps
        .iter()
        .filter(|s| s.node.op.name() == "copy" && s.node.layer == Some(3) && s.stream == 1)
        .count();
    assert!(streamed > 0, "no block weights streamed in: {text}");
    // Every decision is priced: it saves device memory.
    for m in &plan.memory {
        assert!(
            m.bytes_saved > 0,
            "{} {} saves nothing: {text}",
            m.class,
            m.action
        );
    }
}

#[test]
fn qwen_7b_fits_16g_on_a_4060_ti() {
    let plan = common::plan("qwen2.5-7b.ron", &options("rtx4060ti-16g", "16G"));
    assert_fits_like_llmq(&plan);
}

#[test]
fn qwen_14b_fits_24g_on_a_4090() {
    let plan = common::plan("qwen2.5-14b.ron", &options("rtx4090", "24G"));
    assert_fits_like_llmq(&plan);
}

#[test]
fn qwen_0_5b_on_an_h100_keeps_everything() {
    let plan = common::plan("qwen2.5-0.5b.ron", &options("h100", "80G"));
    assert!(fits(&plan), "{}", summary(&plan));
    // No decision: the head (always fused with the loss) runs the micro-batch's 4096 tokens in
    // one chunk, as each chunk's matmuls have a fixed cost and the unchunked head fits.
    assert!(plan.memory.is_empty(), "{:?}", decisions(&plan));
    assert_eq!(plan.host_arena_bytes, 0);
    assert!(plan.buffers.iter().all(|b| b.arena == Arena::Device));
    assert!(plan.steps.iter().all(|s| s.node.op.name() != "copy"));
}

#[test]
fn the_lm_head_runs_in_wide_chunks_where_they_fit() {
    // 16 × 1024 tokens: a quarter is 4096 rows, which fit 80G beside everything else.
    let opts = CompileOptions {
        device: device("h100").unwrap(),
        ..common::options(16, 1024, 1, Precision::Bf16, parse_size("80G").unwrap())
    };
    let plan = common::plan("qwen2.5-0.5b.ron", &opts);
    assert!(fits(&plan), "{}", summary(&plan));
    assert!(
        decisions(&plan)
            .iter()
            .any(|d| d.contains("4096-token chunks")),
        "{:?}",
        decisions(&plan)
    );
}

/// Planning time limits hold for release builds (`cargo test --release --test
/// memory_planner`); a build with debug assertions (the CI's) gets ten times as long.
fn limit(release: Duration) -> Duration {
    if cfg!(debug_assertions) {
        release * 10
    } else {
        release
    }
}

/// Candidates the planner may estimate for one plan of the 32B: at most 32 per release of
/// copies' sources searched (26 when this was written: six to order the state classes, the
/// ladders' probes, one price per decision; 59 for the three releases; 79 with the search
/// for blocks of state to keep on the device: one probe per streamed class, two searches over
/// a count of blocks). The work must not
/// grow with the 64 blocks: a search block by block would estimate hundreds.
const MAX_CANDIDATES_32B: usize = 32 * Release::CHOICES.len();

#[test]
fn the_32b_fits_24g_and_plans_in_time() {
    let opts = options("rtx4090", "24G");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/qwen2.5-32b.ron");
    let start = Instant::now();
    let compiled = compile(&path, &opts).unwrap();
    let took = start.elapsed();
    let plan = &compiled.plan;
    assert_fits_like_llmq(plan);
    // 0.45 s alone on a 2-core machine (three searches, one per release of copies, on
    // threads); up to 1.9 s while another build loads it.
    assert!(
        took < limit(Duration::from_secs(3)),
        "planning took {took:?}"
    );
    // Wall time is noisy on a shared machine; the amount of work is not.
    assert!(
        (1..=MAX_CANDIDATES_32B).contains(&compiled.candidates_estimated),
        "the planner estimated {} candidates",
        compiled.candidates_estimated
    );

    let budgets: Vec<u64> = [16u64, 24, 32, 48].iter().map(|g| g << 30).collect();
    let start = Instant::now();
    let curve = tradeoff_curve(&path, &opts, &budgets).unwrap();
    let took = start.elapsed();
    assert!(
        took < limit(Duration::from_secs(5)),
        "the curve took {took:?}"
    );
    // More memory never makes the estimated step slower.
    let speeds: Vec<f64> = curve.iter().filter_map(|p| p.tokens_per_second).collect();
    assert!(speeds.len() >= 3, "{curve:?}");
    assert!(speeds.windows(2).all(|w| w[1] >= w[0] * 0.999), "{curve:?}");
}

#[test]
fn batch_auto_and_the_trade_off_curve_from_the_command_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmqc"))
        .args(["plan", "models/tiny.ron", "--seq", "64", "--vram", "800M"])
        .args(["--batch", "auto", "--explain"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // The tiny model's largest batch tried (64) is the fastest per token and fits.
    assert!(text.contains("batch 64 × seq 64"), "{text}");
    assert!(text.contains("trade-off curve (batch 64"), "{text}");
    let curve: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("trade-off curve"))
        .skip(2)
        .collect();
    assert_eq!(curve.len(), 6, "{text}");
    // Below the reserve nothing fits; at the budget everything stays on the device.
    assert!(curve[0].contains("does not fit"), "{text}");
    assert!(curve[3].contains("everything on the device"), "{text}");
}

/// `--global-batch` fixes the sequences per optimizer step: `--batch auto` then tries only
/// sizes that divide it, each with the accumulation that makes it up, and a fixed batch that
/// does not divide it is refused.
#[test]
fn a_global_batch_is_split_into_micro_batches_that_make_it_up() {
    let llmqc = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmqc"))
            .args(["plan", "models/tiny.ron", "--seq", "64", "--vram", "800M"])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    // 24 = 8 × 3: 8 is the largest power of two dividing it (the tiny model's fastest size
    // without a global batch is 64, test above), so auto stops there, 3 micro-batches a step.
    let (ok, text) = llmqc(&["--batch", "auto", "--global-batch", "24"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("batch 8 × seq 64 × 3 micro-batches = 1,536 tokens"),
        "{text}"
    );
    let (ok, text) = llmqc(&["--batch", "6", "--global-batch", "24"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("batch 6 × seq 64 × 4 micro-batches"),
        "{text}"
    );
    let (ok, text) = llmqc(&["--batch", "5", "--global-batch", "24"]);
    assert!(
        !ok && text.contains("not a multiple of --batch 5"),
        "{text}"
    );
    let (ok, text) = llmqc(&["--global-batch", "24", "--grad-accum", "2"]);
    assert!(!ok && text.contains("cannot be used with"), "{text}");
}

/// The eval section (the loss alone, which evaluation runs after the forward) costs training no
/// memory: it lies between forward and backward, none of its steps holds more live bytes than
/// the backward's fused head step after it (the same scratch, plus the gradients), and the
/// hidden state it reads stays a checkpoint: the head's backward reads the forward's, not one
/// recomputed with the last block (which would hold that block's recomputed tensors during the
/// head). The 7B in 16G of an H100 at batch 32 recomputes every block.
#[test]
fn the_eval_section_adds_nothing_to_the_training_peak() {
    let h100_7b = CompileOptions {
        device: device("h100").unwrap(),
        ..common::options(32, 1024, 1, Precision::Fp8, parse_size("16G").unwrap())
    };
    for (model, opts) in [
        ("qwen2.5-0.5b.ron", options("h100", "80G")),
        ("qwen2.5-7b.ron", options("rtx4060ti-16g", "16G")),
        ("qwen2.5-7b.ron", h100_7b),
    ] {
        let plan = common::plan(model, &opts);
        let eval = plan
            .section(EVAL_SECTION)
            .expect("the planner fuses the head");
        let profile = memory_profile(&plan, Arena::Device);
        let live = |s: u32| profile[s as usize].iter().sum::<u64>();
        let head = (eval.end..plan.steps.len() as u32)
            .find(|&s| plan.steps[s as usize].node.op.name() == "classifier_cross_entropy_backward")
            .expect("the fused head runs in the backward");
        let most = (eval.start..eval.end).map(live).max().unwrap_or(0);
        println!(
            "{model}: eval at most {most} bytes live, the fused head step {}",
            live(head)
        );
        assert!(most <= live(head), "{model}: {}", summary(&plan));
        let hidden = &plan.tensor(plan.steps[head as usize].node.inputs[0]).name;
        assert!(
            !hidden.starts_with("recompute."),
            "{model}: the head reads {hidden}"
        );
    }
}

/// The 7B with its master weights and both Adam moments on the host, which stream through the
/// optimizer, under the release policies of device → host copies' sources: held until the
/// copies queued before them have finished (the planner's first choice), the optimizer no
/// longer waits behind each large write-back for the next prefetch; released by their own
/// time (its last resort), the sources are held for less and the step is slower.
#[test]
fn copies_released_after_their_queue_trade_memory_for_optimizer_time() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/qwen2.5-7b.ron");
    let opts = options("h100", "80G");
    let plans = Release::CHOICES.map(|release| {
        let choice = MemoryChoice {
            streamed: vec![Role::MasterWeight, Role::AdamM, Role::AdamV],
            lm_head_chunk: Some(4096),
            release,
            ..MemoryChoice::default()
        };
        compile_with_choice(&path, &opts, &choice).unwrap().plan
    });
    let [held, .., eager] = &plans;
    let (h, e) = (&held.estimates, &eager.estimates);
    assert!(
        h.optimizer_seconds < 0.9 * e.optimizer_seconds,
        "optimizer {:.1} ms held after the queue against {:.1} ms eagerly",
        h.optimizer_seconds * 1e3,
        e.optimizer_seconds * 1e3
    );
    assert!(h.step_seconds < e.step_seconds);
    // Each policy holds sources no longer than the one before it.
    for pair in plans.windows(2) {
        assert!(
            pair[1].device_arena_bytes <= pair[0].device_arena_bytes,
            "{} B after {} B",
            pair[1].device_arena_bytes,
            pair[0].device_arena_bytes
        );
    }
}

/// Where only eagerly released copies fit (a budget between the arenas of the most relieved
/// choice of a tiny model released eagerly and after its queue), the planner takes the eager
/// release, fits, and names the decision with its price.
#[test]
fn the_planner_releases_copies_eagerly_where_nothing_else_fits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny.ron");
    let roomy = common::options(2, 16, 1, Precision::Bf16, 1 << 30);
    let [.., least_held, eager] = Release::CHOICES.map(|release| {
        let choice = MemoryChoice {
            streamed: vec![
                Role::Weight,
                Role::MasterWeight,
                Role::Gradient,
                Role::AdamM,
                Role::AdamV,
            ],
            recompute: vec![0, 1],
            offload: vec![0, 1],
            lm_head_chunk: Some(8),
            release,
            ..MemoryChoice::default()
        };
        compile_with_choice(&path, &roomy, &choice).unwrap().plan
    });
    assert!(
        eager.device_arena_bytes < least_held.device_arena_bytes,
        "eager {} B against {} B",
        eager.device_arena_bytes,
        least_held.device_arena_bytes
    );
    let between = (eager.device_arena_bytes + least_held.device_arena_bytes) / 2;
    let tight = common::options(
        2,
        16,
        1,
        Precision::Bf16,
        llmq_compiler::target::RESERVE_BYTES + between,
    );
    let plan = compile(&path, &tight).unwrap().plan;
    assert!(fits(&plan), "{}", summary(&plan));
    assert!(
        decisions(&plan)
            .iter()
            .any(|d| d.starts_with("copies - released by their own time")),
        "{}",
        summary(&plan)
    );
}

/// `L3-L27` → 3..=27.
fn blocks_of(range: &str) -> std::ops::RangeInclusive<u32> {
    let mut ends = range
        .split('-')
        .map(|l| l.trim_start_matches('L').parse::<u32>().unwrap());
    let first = ends.next().unwrap();
    first..=ends.next().unwrap_or(first)
}

/// Where a whole class of state does not fit beside the activations, the planner keeps its
/// first blocks on the device (recomputing more blocks to make room, since a block of
/// optimizer state streamed costs more than a block recomputed), and streams the rest.
#[test]
fn the_planner_keeps_the_first_blocks_of_a_class_that_does_not_fit_whole() {
    let opts = options("h100", "16G");
    let plan = common::plan("qwen2.5-1.5b.ron", &opts);
    assert!(fits(&plan), "{}", summary(&plan));
    let d = decisions(&plan);
    let kept = plan
        .memory
        .iter()
        .find(|d| d.action.ends_with(" kept"))
        .unwrap_or_else(|| panic!("no class kept in part: {d:?}"));
    let streamed_blocks = blocks_of(&kept.blocks);
    let first_streamed = *streamed_blocks.start();
    assert!(first_streamed > 0, "{d:?}");
    let role = plan
        .tensors
        .iter()
        .find(|t| t.role.category().name() == kept.class)
        .unwrap()
        .role;
    for t in plan.tensors.iter().filter(|t| t.role == role) {
        let on_device = plan.buffers[t.buffer.index()].arena == Arena::Device;
        let kept_block = t.layer.is_some_and(|l| l < first_streamed);
        assert_eq!(on_device, kept_block, "{} in the wrong arena", t.name);
    }
    // The same plan with those blocks streamed too is slower.
    let recompute = plan
        .memory
        .iter()
        .find(|d| d.class == "activations" && d.action == "recompute in backward")
        .map_or(Vec::new(), |d| blocks_of(&d.blocks).collect());
    let streamed = plan
        .memory
        .iter()
        .filter(|d| d.action.starts_with("on host, streamed"))
        .map(|d| {
            let t = plan
                .tensors
                .iter()
                .find(|t| t.role.category().name() == d.class);
            t.unwrap().role
        })
        .collect();
    // The head's chunk as the plan has it: `fused with loss, 1024-token chunks`, or no
    // decision where it runs the micro-batch's 4096 tokens at once.
    let lm_head_chunk = plan
        .memory
        .iter()
        .find(|d| d.class == "lm head")
        .map_or(4096, |d| {
            let words = d.action.split(' ');
            let chunk = words
                .filter_map(|w| w.strip_suffix("-token"))
                .next()
                .unwrap();
            chunk.parse().unwrap()
        });
    let whole = MemoryChoice {
        streamed,
        recompute,
        lm_head_chunk: Some(lm_head_chunk),
        ..MemoryChoice::default()
    };
    let whole = compile_with_choice(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/qwen2.5-1.5b.ron"),
        &opts,
        &whole,
    )
    .unwrap()
    .plan;
    assert!(
        plan.estimates.step_seconds < whole.estimates.step_seconds,
        "{:.1} ms kept, {:.1} ms all streamed",
        plan.estimates.step_seconds * 1e3,
        whole.estimates.step_seconds * 1e3
    );
}

/// Without master weights the planner decides nothing about them: it searches only the state
/// classes the plan has (Qwen2.5-7B FP8 at 4 × 1024 in 80 GiB once showed "master all on host,
/// streamed through", saving -84 KiB at no cost, beside its real decisions).
#[test]
fn without_master_weights_the_planner_decides_only_the_classes_there_are() {
    let mut opts = common::options(4, 1024, 128, Precision::Fp8, parse_size("80G").unwrap());
    opts.optimizer.master = Some(MasterWeights::None);
    let plan = common::plan("qwen2.5-7b.ron", &opts);
    assert!(fits(&plan), "{}", summary(&plan));
    assert!(plan.tensors.iter().all(|t| t.role != Role::MasterWeight));
    let d = decisions(&plan);
    assert!(d.iter().any(|d| d.contains("on host")), "{d:?}");
    assert!(d.iter().all(|d| !d.starts_with("master")), "{d:?}");
}

/// Bringing a streamed class back whole (with more blocks recomputed) is weighed against the
/// kept blocks, not in place of them: Qwen2.5-7B FP8 at 8 × 1024 in 80 GiB keeps the first
/// blocks of its Adam m (bringing all of it back and recomputing a block is estimated slower).
#[test]
fn a_class_brought_back_does_not_displace_kept_blocks() {
    let opts = common::options(8, 1024, 64, Precision::Fp8, parse_size("80G").unwrap());
    let plan = common::plan("qwen2.5-7b.ron", &opts);
    assert!(fits(&plan), "{}", summary(&plan));
    let d = decisions(&plan);
    assert!(d.iter().any(|d| d.ends_with(" kept")), "{d:?}");
}
