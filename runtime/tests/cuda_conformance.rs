//! The CUDA backend against the CPU reference, on a GPU. Without one (CI) each test prints why
//! it skips and passes.
//!
//! * Every step of several small plans (BF16 and FP32, with and without biases, with gradient
//!   accumulation) runs alone on both backends from the same random inputs, fresh each run
//!   (the seed is printed; `LLMQ_TEST_SEED` repeats one), and every output is compared.
//! * A whole training step of the tiny model (forward, backward, optimizer, twice, so the
//!   second replays the captured CUDA graphs) gives the same loss, gradients and update, in
//!   BF16 and in FP8 (e4m3 and e5m2 gradients), plainly planned and through every memory
//!   mechanism.
//!
//! On the device: `LLMQ_MODELS_DIR=models ./cuda_conformance --nocapture --test-threads=1`.
//!
//! Tolerance rule, per element: |gpu − cpu| ≤ u·(2·|cpu| + 8·rms(cpu)), where u is the unit
//! roundoff of the output's dtype (2⁻⁸ for BF16; for FP32 2⁻¹⁷, leaving 2⁷ ulps for the
//! different summation order and the device's `expf`/`powf`). The first term allows the two
//! backends' FP32 results to round to neighbouring values of the storage dtype (one ulp is at
//! most 2u·|x|); the second allows cancellation in sums over many terms, whose error scales
//! with the size of the terms rather than the result.
//!
//! FP8 outputs must be bit-identical: each is one product `x·scale` rounded once (`quantize`,
//! `quantize_dual`, `cast`), with the scale from the same abs-max by the same IEEE
//! division, so nothing depends on summation order. Outputs rounded stochastically to BF16
//! (`cast_stochastic`, AdamW's moments) use the same random bits on both backends: the cast is
//! exact, the moments may differ by one BF16 ulp where the device's fused multiply-adds change
//! the FP32 value before rounding (within the BF16 rule above). `fp8_matmul`'s BF16 output is
//! the FP32 sum of exact FP8 products in another order, rounded once: the BF16 rule.
//! In a whole FP8 step those one-ulp differences of BF16 activations move an abs-max now and
//! then, and with it every FP8 value of a tensor by up to one FP8 ulp (2⁻³ relative for e4m3),
//! so the FP8 step's bars are looser (see [`FP8_STEP`]).

mod cuda_common;

use llmq_compiler::autodiff::{MasterWeights, OptimizerOptions};
use llmq_compiler::plan::{Plan, Step};
use llmq_compiler::target::{Precision, device};
use llmq_kernels::{DType, Op, rng};
use llmq_passes::{CompileOptions, compile};
use llmq_runtime::backend::Backend;
use llmq_runtime::backend::cpu::CpuBackend;
use llmq_runtime::backend::cuda::{self, CudaBackend, CudaOptions};
use std::path::Path;

/// True when a GPU is usable; otherwise says why the test skips.
fn plan(model: &str, batch: u64, seq: u64, grad_accum: u32, precision: Precision) -> Plan {
    plan_within(model, batch, seq, grad_accum, precision, 80 << 30)
}

/// The tiny model, batch 4 × 128, planned into 769 MiB (1 MiB above the reserve): the memory
/// planner chunks the LM head, streams master weights, moments, weights and gradients through
/// the device and offloads saved activations, so copy steps, the host arena and the chunked
/// head all run (in BF16 and in FP8).
fn every_memory_mechanism(precision: Precision) -> Plan {
    plan_within("tiny.ron", 4, 128, 1, precision, 769 << 20)
}

/// The tiny model in FP8 with gradients in `grad_fp8` (e4m3 or e5m2).
fn tiny_fp8(batch: u64, seq: u64, grad_fp8: DType) -> Plan {
    compile_model(
        "tiny.ron",
        &options(batch, seq, 1, Precision::Fp8, grad_fp8, 80 << 30, &[]),
    )
}

/// The tiny model in FP8 with two micro-batches, where the planner makes the weights' FP8
/// copies once per step (the `quantize_weights` section).
fn fp8_weights_once() -> Plan {
    let plan = compile_model(
        "tiny.ron",
        &options(2, 64, 2, Precision::Fp8, DType::F8E4M3, 80 << 30, &[]),
    );
    let section = llmq_compiler::plan::QUANTIZE_WEIGHTS_SECTION;
    assert!(plan.section(section).is_some());
    plan
}

fn plan_within(
    model: &str,
    batch: u64,
    seq: u64,
    grad_accum: u32,
    precision: Precision,
    vram_bytes: u64,
) -> Plan {
    compile_model(
        model,
        &options(
            batch,
            seq,
            grad_accum,
            precision,
            DType::F8E4M3,
            vram_bytes,
            &[],
        ),
    )
}

/// The tiny model without horizontal fusion: separate q/k/v and gate/up matmuls, swiglu on
/// two tensors (the packed plans above run split, concat and the packed swiglu).
fn tiny_unfused(precision: Precision) -> Plan {
    compile_model(
        "tiny-qwen2.ron",
        &options(
            2,
            64,
            1,
            precision,
            DType::F8E4M3,
            80 << 30,
            &["horizontal-fusion"],
        ),
    )
}

/// Options for `batch × seq` in `precision` on an H100 with `vram_bytes`, less the passes
/// `skip`, with the default optimizer.
fn options(
    batch: u64,
    seq: u64,
    grad_accum: u32,
    precision: Precision,
    grad_fp8: DType,
    vram_bytes: u64,
    skip: &[&str],
) -> CompileOptions {
    CompileOptions {
        batch,
        seq,
        grad_accum,
        precision,
        grad_fp8,
        vram_bytes,
        gpus: 1,
        device: device("h100").unwrap(),
        optimizer: OptimizerOptions::default(),
        dump_after: None,
        skip_passes: skip.iter().map(|s| s.to_string()).collect(),
    }
}

/// The plan of `model` (a file of models/) for `opts`.
fn compile_model(model: &str, opts: &CompileOptions) -> Plan {
    // LLMQ_MODELS_DIR: where the test binary runs away from its source tree (the device).
    let dir = std::env::var_os("LLMQ_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join(model);
    compile(&path, opts)
        .unwrap_or_else(|e| panic!("planning {model}: {e}"))
        .plan
}

/// The tiny model in `precision` with LLMQ's published state: no master weights (AdamW
/// rounds the BF16 weights stochastically in place) and BF16 moments.
fn tiny_without_master(precision: Precision) -> Plan {
    let mut opts = options(2, 64, 1, precision, DType::F8E4M3, 80 << 30, &[]);
    opts.optimizer.master = Some(MasterWeights::None);
    opts.optimizer.moments = Some(DType::BF16);
    compile_model("tiny.ron", &opts)
}

/// Random values for input `index` of `op`, in the range the op meets in training
/// (`usize::MAX`: an output's old value).
fn random_input(plan: &Plan, op: &Op, index: usize, n: usize, seed: u64, stream: u64) -> Vec<f32> {
    let vocab = plan.model.dims["vocab"] as f64;
    let u = |i: usize| rng::uniform(seed, stream, i as u64);
    let range = |lo: f64, hi: f64| (0..n).map(|i| (lo + (hi - lo) * u(i)) as f32).collect();
    match (op, index) {
        (Op::Embedding(_), 0) => (0..n).map(|i| (u(i) * vocab).floor() as f32).collect(),
        // Every other token the same id: in a plan of over 2048 tokens that id takes the
        // kernel's scanning path (more than 1024 positions), the others its sorted buckets.
        (Op::EmbeddingBackward(_), 0) => (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    1.0
                } else {
                    (u(i) * vocab).floor() as f32
                }
            })
            .collect(),
        // Targets, about one in sixteen ignored (negative).
        (Op::CrossEntropy(_) | Op::CrossEntropyBackward(_), 1)
        | (Op::ClassifierCrossEntropy(_) | Op::ClassifierCrossEntropyBackward(_), 2) => (0..n)
            .map(|i| ((u(i) * (vocab + vocab / 15.0)).floor() - vocab / 15.0).max(-1.0) as f32)
            .collect(),
        (Op::CrossEntropyBackward(_), 2) | (Op::ClassifierCrossEntropyBackward(_), 3) => {
            range(0.5, 1.0)
        }
        (
            Op::RmsNormBackward(_) | Op::RmsNormBackwardAdd(_) | Op::RmsNormBackwardAddAbsMax(_),
            3,
        ) => range(0.5, 2.0),
        (Op::AttentionBackward(_), 4) => range(1.0, 3.0),
        (Op::ClipScale(_), 0) => range(0.5, 4.0),
        (Op::AdamW(_), 3) => range(0.0, 1e-2),
        (Op::AdamW(_), 4) => range(0.5, 1.0),
        (Op::AdamW(_), 5) | (Op::CastStochastic(_), 1) => {
            vec![1e-3, (1.0 + (u(0) * 5.0).floor()) as f32]
        }
        // Abs-maxes below the values' largest: quantisation saturates some.
        (Op::Quantize(_) | Op::QuantizeDual(_), 1) => range(0.5, 2.0),
        // Descales as quantisation makes them (amax / 448 for amax near 1).
        (Op::Fp8Matmul(_), 1 | 3) => range(1e-3, 4e-3),
        _ => range(-1.0, 1.0),
    }
}

fn unit_roundoff(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 2f32.powi(-8),
        DType::F8E4M3 => 2f32.powi(-4),
        DType::F8E5M2 => 2f32.powi(-3),
        _ => 2f32.powi(-17),
    }
}

/// `None` when `gpu` is within the tolerance rule of `cpu` (FP8: equal), else a description of
/// the worst element and the first values. `roundings`: how many times the GPU rounds the
/// result to its dtype where the CPU rounds once (the rule's bound grows with each).
fn compare(dtype: DType, roundings: u64, cpu: &[f32], gpu: &[f32]) -> Option<String> {
    let u = if dtype.is_fp8() {
        0.0
    } else {
        unit_roundoff(dtype) * roundings as f32
    };
    let rms =
        (cpu.iter().map(|v| (v * v) as f64).sum::<f64>() / cpu.len().max(1) as f64).sqrt() as f32;
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&c, &g)) in cpu.iter().zip(gpu).enumerate() {
        let tol = u * (2.0 * c.abs() + 8.0 * rms);
        let err = (g - c).abs();
        // Equal values (infinities included) and NaN against NaN agree; a NaN error does not.
        let agree = err <= tol || c == g || (c.is_nan() && g.is_nan());
        let bad = !agree;
        // How far beyond the tolerance; FP8 (tolerance 0): the error itself.
        let excess = if tol > 0.0 { err / tol } else { err };
        if bad && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    worst.map(|(i, ratio)| {
        format!(
            "element {i}: gpu {} cpu {} ({ratio:.1}× the tolerance, or the error if exact; \
             u={u:e}, rms {rms:e}); \
             first gpu {:?} cpu {:?}",
            gpu[i],
            cpu[i],
            &gpu[..gpu.len().min(4)],
            &cpu[..cpu.len().min(4)]
        )
    })
}

/// How many times the GPU rounds output `t` of `step` where the CPU rounds once: the chunked
/// LM head's backward adds each chunk's weight gradient into the (BF16) output, one rounding
/// per chunk; the CPU reference sums every chunk in FP32 first.
fn roundings(plan: &Plan, step: &Step, t: llmq_compiler::ir::TensorId) -> u64 {
    match &step.node.op {
        Op::ClassifierCrossEntropyBackward(c) if step.node.outputs[1] == t => plan
            .tensor(step.node.inputs[0])
            .ty
            .rows()
            .div_ceil(c.chunk_rows),
        _ => 1,
    }
}

/// Runs every step of `plan` that `select` takes alone on both backends from the same random
/// inputs (and random old outputs, for the steps that accumulate); returns the failures.
fn check_steps(label: &str, plan: &Plan, seed: u64, select: fn(&Step) -> bool) -> Vec<String> {
    let mut cpu = CpuBackend::new(plan.clone());
    let mut gpu = CudaBackend::new(plan.clone(), CudaOptions::default())
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut failures = Vec::new();
    for (i, step) in plan.steps.iter().enumerate().filter(|(_, s)| select(s)) {
        // Outputs get random old values too (kept when accumulating, else overwritten);
        // in-place outputs (AdamW's) keep their input's values.
        let fresh_outputs = step
            .node
            .outputs
            .iter()
            .filter(|t| !step.node.inputs.contains(t));
        let operands = step
            .node
            .inputs
            .iter()
            .enumerate()
            .chain(fresh_outputs.map(|t| (usize::MAX, t)));
        for (k, (index, &t)) in operands.enumerate() {
            let n = plan.tensor(t).ty.numel() as usize;
            let values = random_input(plan, &step.node.op, index, n, seed, (i * 64 + k) as u64);
            cpu.write_f32(t, &values).unwrap();
            gpu.write_f32(t, &values).unwrap();
        }
        cpu.run_steps(i as u32, i as u32 + 1)
            .unwrap_or_else(|e| panic!("{label} cpu step {i}: {e}"));
        gpu.run_steps(i as u32, i as u32 + 1)
            .unwrap_or_else(|e| panic!("{label} gpu step {i}: {e}"));
        for &t in &step.node.outputs {
            let tensor = plan.tensor(t);
            let (c, g) = (cpu.read_f32(t).unwrap(), gpu.read_f32(t).unwrap());
            let verdict = compare(tensor.ty.dtype, roundings(plan, step, t), &c, &g);
            let line = format!(
                "{label} step {i:>3} {:<60} {:<28} {:>5} {}",
                step.node.op.to_string(),
                tensor.name,
                tensor.ty.dtype.name(),
                verdict.as_deref().unwrap_or("ok")
            );
            println!("{line}");
            if verdict.is_some() {
                failures.push(line);
            }
        }
    }
    failures
}

#[test]
fn every_step_of_small_plans_matches_the_cpu_reference() {
    if !cuda_common::gpu_present("every_step_of_small_plans_matches_the_cpu_reference") {
        return;
    }
    let seed = cuda_common::seed();
    let plans = [
        ("tiny bf16", plan("tiny.ron", 2, 64, 1, Precision::Bf16)),
        ("tiny fp32", plan("tiny.ron", 2, 64, 1, Precision::Fp32)),
        ("tiny-qwen2 bf16 unfused", tiny_unfused(Precision::Bf16)),
        ("tiny-qwen2 fp8 unfused", tiny_unfused(Precision::Fp8)),
        (
            "tiny-qwen2 bf16 accum",
            plan("tiny-qwen2.ron", 2, 48, 2, Precision::Bf16),
        ),
        (
            "tiny-qwen3 fp32",
            plan("tiny-qwen3.ron", 1, 96, 1, Precision::Fp32),
        ),
        (
            "tiny bf16 in 769 MiB",
            every_memory_mechanism(Precision::Bf16),
        ),
        ("tiny fp8 e4m3", tiny_fp8(2, 64, DType::F8E4M3)),
        ("tiny fp8 e5m2", tiny_fp8(2, 64, DType::F8E5M2)),
        (
            "tiny fp8, weights quantised once per step",
            fp8_weights_once(),
        ),
        (
            "tiny fp8 in 769 MiB",
            every_memory_mechanism(Precision::Fp8),
        ),
        (
            "tiny bf16 without master weights",
            tiny_without_master(Precision::Bf16),
        ),
        (
            "tiny fp8 without master weights",
            tiny_without_master(Precision::Fp8),
        ),
    ];
    let mut failures: Vec<String> = plans
        .iter()
        .flat_map(|(label, p)| check_steps(label, p, seed, |_| true))
        .collect();
    // The tensor-core attention kernels (head sizes 64 and 128), on the first block of real
    // models, with a sequence that ends inside a tile.
    let first_attention = |s: &Step| {
        s.node.layer == Some(0) && matches!(s.node.op, Op::Attention(_) | Op::AttentionBackward(_))
    };
    for (label, model) in [
        ("qwen2.5-0.5b", "qwen2.5-0.5b.ron"),
        ("qwen3-0.6b", "qwen3-0.6b.ron"),
    ] {
        let p = plan(model, 2, 160, 1, Precision::Bf16);
        failures.extend(check_steps(label, &p, seed, first_attention));
    }
    // Real widths for the vectorised kernels (RoPE's and split_rope's eight pairs per thread
    // with the 0.5B's q/k/v bias, the warp-per-row RMSNorms and RMSNorm backward, the 16-byte
    // FP8 transpose) and the embedding's backward over a real vocabulary, on the first block
    // of the 0.5B in FP8.
    let first_block_elementwise = |s: &Step| {
        let block_op = matches!(
            s.node.op,
            Op::Rope(_)
                | Op::RopeBackward(_)
                | Op::SplitRope(_)
                | Op::SplitRopeBackward(_)
                | Op::SplitRopeBackwardAbsMax(_)
                | Op::RmsNorm(_)
                | Op::RmsNormAbsMax(_)
                | Op::AddRmsNorm(_)
                | Op::AddRmsNormAbsMax(_)
                | Op::RmsNormBackward(_)
                | Op::RmsNormBackwardAdd(_)
                | Op::RmsNormBackwardAddAbsMax(_)
                | Op::TransposeFp8(_)
        );
        (s.node.layer == Some(0) && block_op) || matches!(s.node.op, Op::EmbeddingBackward(_))
    };
    let q05_fp8 = plan("qwen2.5-0.5b.ron", 2, 160, 1, Precision::Fp8);
    failures.extend(check_steps(
        "qwen2.5-0.5b fp8",
        &q05_fp8,
        seed,
        first_block_elementwise,
    ));
    // 4096 tokens: one id is named 2048 times (the embedding backward's scanning path).
    let many_tokens = plan("tiny.ron", 8, 512, 1, Precision::Bf16);
    failures.extend(check_steps("tiny bf16 8x512", &many_tokens, seed, |s| {
        matches!(s.node.op, Op::EmbeddingBackward(_))
    }));
    // Plans accumulate the embedding's gradient; the kernel's written form (rows no token
    // names become zero) checked with the flag turned off.
    let mut written = many_tokens.clone();
    for step in &mut written.steps {
        if matches!(step.node.op, Op::EmbeddingBackward(_)) {
            step.node.accumulate[0] = false;
        }
    }
    failures.extend(check_steps(
        "tiny bf16 8x512 written",
        &written,
        seed,
        |s| matches!(s.node.op, Op::EmbeddingBackward(_)),
    ));
    assert!(
        failures.is_empty(),
        "{} outputs beyond tolerance:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na * nb)
    }
}

#[test]
fn a_whole_training_step_of_the_tiny_model_matches_the_cpu() {
    if !cuda_common::gpu_present("a_whole_training_step_of_the_tiny_model_matches_the_cpu") {
        return;
    }
    let seed = cuda_common::seed();
    whole_steps_match(
        plan("tiny.ron", 4, 128, 1, Precision::Bf16),
        seed,
        BF16_STEP,
    );
}

#[test]
fn a_whole_fp8_training_step_of_the_tiny_model_matches_the_cpu() {
    if !cuda_common::gpu_present("a_whole_fp8_training_step_of_the_tiny_model_matches_the_cpu") {
        return;
    }
    let seed = cuda_common::seed();
    for grad_fp8 in [DType::F8E4M3, DType::F8E5M2] {
        println!("gradients in {}", grad_fp8.name());
        whole_steps_match(tiny_fp8(4, 128, grad_fp8), seed, FP8_STEP);
    }
}

#[test]
fn a_whole_training_step_through_every_memory_mechanism_matches_the_cpu() {
    if !cuda_common::gpu_present(
        "a_whole_training_step_through_every_memory_mechanism_matches_the_cpu",
    ) {
        return;
    }
    let seed = cuda_common::seed();
    for (precision, bars) in [(Precision::Bf16, BF16_STEP), (Precision::Fp8, FP8_STEP)] {
        let plan = every_memory_mechanism(precision);
        assert!(plan.host_arena_bytes > 0 && !plan.memory.is_empty());
        println!("{precision:?}");
        whole_steps_match(plan, seed, bars);
    }
    println!("Fp8, weights quantised once per step");
    whole_steps_match(fp8_weights_once(), seed, FP8_STEP);
}

/// The bars of a whole training step: the loss's relative error and the gradient norm's,
/// the smallest cosine of a weight's gradient and of its update.
#[derive(Clone, Copy)]
struct StepBars {
    loss: f32,
    grad_cosine: f64,
    update_cosine: f64,
}

/// BF16: one-ulp differences of activations only.
const BF16_STEP: StepBars = StepBars {
    loss: 2e-3,
    grad_cosine: 0.999,
    update_cosine: 0.99,
};

/// FP8: a moved abs-max shifts a whole tensor's FP8 values by up to one FP8 ulp (module doc);
/// the loss bar is the FP8 bar against PyTorch (1%), the gradient cosine its 0.98.
/// Updates (elements of undecided gradient sign left out, see `whole_steps_match`): 0.95.
const FP8_STEP: StepBars = StepBars {
    loss: 1e-2,
    grad_cosine: 0.98,
    update_cosine: 0.95,
};

/// Two training steps (forward, backward, optimizer) on both backends from the same weights
/// and tokens: losses, gradients, norms and updates agree within `bars`.
fn whole_steps_match(plan: Plan, seed: u64, bars: StepBars) {
    let mut cpu = CpuBackend::new(plan.clone());
    let mut gpu = CudaBackend::new(plan.clone(), CudaOptions::default()).unwrap();
    let io = plan.io.clone();
    let vocab = plan.model.dims["vocab"] as f64;
    let both = |cpu: &mut CpuBackend, gpu: &mut CudaBackend, t, v: &[f32]| {
        cpu.write_f32(t, v).unwrap();
        gpu.write_f32(t, v).unwrap();
    };
    for (k, p) in io.params.iter().enumerate() {
        let n = plan.tensor(p.weight).ty.numel() as usize;
        let w: Vec<f32> = (0..n)
            .map(|i| 0.1 * rng::normal(seed, 1000 + k as u64, i as u64) as f32)
            .collect();
        // The master copy is the weight's exact value (rounded to the weight's dtype first).
        both(&mut cpu, &mut gpu, p.weight, &w);
        if let Some(m) = p.master {
            let rounded = cpu.read_f32(p.weight).unwrap();
            both(&mut cpu, &mut gpu, m, &rounded);
        }
    }
    for b in [&mut cpu as &mut dyn Backend, &mut gpu] {
        cuda_common::quantize_weights(b);
    }
    for step in 1..=2u64 {
        let n = plan.tensor(io.tokens).ty.numel() as usize;
        let tokens: Vec<f32> = (0..n + 1)
            .map(|i| (rng::uniform(seed, 7 + step, i as u64) * vocab).floor() as f32)
            .collect();
        both(&mut cpu, &mut gpu, io.tokens, &tokens[..n]);
        both(&mut cpu, &mut gpu, io.targets, &tokens[1..]);
        both(&mut cpu, &mut gpu, io.dloss, &[1.0]);
        for b in [&mut cpu as &mut dyn Backend, &mut gpu] {
            b.run_section("forward").unwrap();
            b.run_section("backward").unwrap();
        }
        let (lc, lg) = (
            cpu.read_f32(io.loss).unwrap()[0],
            gpu.read_f32(io.loss).unwrap()[0],
        );
        let rel = ((lg - lc) / lc).abs();
        println!("step {step}: loss cpu {lc} gpu {lg} (relative error {rel:e})");
        assert!(rel < bars.loss, "step {step}: loss cpu {lc} gpu {lg}");
        let mut grads = Vec::new();
        for p in &io.params {
            let name = &plan.tensor(p.grad).name;
            let (gc, gg) = (cpu.read_f32(p.grad).unwrap(), gpu.read_f32(p.grad).unwrap());
            let cos = cosine(&gc, &gg);
            grads.push((gc, gg));
            println!("step {step}: {name:<28} cosine {cos:.6}");
            assert!(
                cos > bars.grad_cosine,
                "step {step}: {name}: gradient cosine {cos}"
            );
        }
        let before: Vec<Vec<f32>> = io
            .params
            .iter()
            .map(|p| cpu.read_f32(p.master.unwrap_or(p.weight)).unwrap())
            .collect();
        both(&mut cpu, &mut gpu, io.hyper, &[1e-3, step as f32]);
        cpu.run_section("optimizer").unwrap();
        gpu.run_section("optimizer").unwrap();
        let (nc, ng) = (
            cpu.read_f32(io.grad_norm).unwrap()[0],
            gpu.read_f32(io.grad_norm).unwrap()[0],
        );
        let rel = ((ng - nc) / nc).abs();
        println!("step {step}: gradient norm cpu {nc} gpu {ng} (relative error {rel:e})");
        assert!(rel < bars.loss, "grad norm cpu {nc} gpu {ng}");
        for ((p, old), (gc, gg)) in io.params.iter().zip(&before).zip(&grads) {
            let t = p.master.unwrap_or(p.weight);
            let (wc, wg) = (cpu.read_f32(t).unwrap(), gpu.read_f32(t).unwrap());
            // AdamW's first updates are nearly lr·sign(g): an element whose gradient differs
            // between the backends by as much as its own size has no agreed sign, and its
            // update is left out (else one such element of a 64-wide norm weight costs 0.03).
            let decided: Vec<bool> = gc
                .iter()
                .zip(gg)
                .map(|(c, g)| (g - c).abs() < c.abs())
                .collect();
            let delta = |w: &[f32]| -> Vec<f32> {
                w.iter()
                    .zip(old)
                    .zip(&decided)
                    .map(|((a, b), &keep)| if keep { a - b } else { 0.0 })
                    .collect()
            };
            let cos = cosine(&delta(&wc), &delta(&wg));
            let name = &plan.tensor(t).name;
            let undecided = decided.iter().filter(|&&d| !d).count();
            println!(
                "step {step}: {name:<28} update cosine {cos:.6} ({undecided} of {} undecided)",
                decided.len()
            );
            assert!(
                cos > bars.update_cosine,
                "step {step}: {name}: update cosine {cos}"
            );
            // Both backends copy the GPU's master weights into the compute weights: keep them
            // equal so the next step starts from the same model.
            let w = gpu.read_bytes(p.weight).unwrap();
            cpu.write_bytes(p.weight, &w).unwrap();
            cpu.write_bytes(t, &gpu.read_bytes(t).unwrap()).unwrap();
        }
        for p in &io.params {
            for t in [p.m, p.v] {
                cpu.write_bytes(t, &gpu.read_bytes(t).unwrap()).unwrap();
            }
        }
        for b in [&mut cpu as &mut dyn Backend, &mut gpu] {
            cuda_common::quantize_weights(b);
        }
    }
}

#[test]
fn without_a_gpu_the_backend_says_why_instead_of_panicking() {
    let Err(why) = cuda::probe() else {
        return; // a GPU is present: the other tests run
    };
    let plan = plan("tiny.ron", 1, 16, 1, Precision::Bf16);
    match CudaBackend::new(plan, CudaOptions::default()) {
        Err(llmq_runtime::backend::BackendError::Unavailable(message)) => {
            assert_eq!(message, why)
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("the probe failed ({why}) but the backend started"),
    }
}
