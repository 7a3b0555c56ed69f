//! Training throughput of planned models on the GPU, for docs/benchmarks.md. Ignored by default
//! (it needs a GPU and plan files); on the device:
//!
//! ```text
//! LLMQ_BENCH_PLANS="q05-fp8.bin q05-bf16.bin" LLMQ_BENCH_STEPS=6 \
//!     ./cuda_throughput --ignored --nocapture --test-threads=1
//! ```
//!
//! Each plan runs `LLMQ_BENCH_STEPS` optimizer steps (forward and backward of each of the plan's
//! micro-batches, then the optimizer; the loss of every micro-batch and the gradient norm read
//! back, as `llmq-run` does) on random weights and tokens, and prints one line: tokens/s and
//! step time (median of the steps after the first two, which compile nothing but capture the
//! CUDA graphs; after the first one with gradient accumulation), MFU, the planner's estimate,
//! the plan's arena and the GPU memory the whole process holds (nvidia-smi), the first and last
//! loss. With `LLMQ_BENCH_PROFILE=1` it then times every step alone (`Backend::step_times`)
//! (after replaying each section once as a whole, to show what runs between its kernels) and
//! prints the ops that take longest, measured against the planner's estimate. Weights are
//! uniform with the init's standard deviation (not `llmq-run`'s normal init:
//! for a 7B model that takes minutes on one core), drawn on all cores. `LLMQ_BENCH_ATTENTION`
//! picks the attention kernels: `cudnn` (the default: cuDNN's where they serve), `own`, or
//! `both` (every plan twice, cuDNN first, side by side in one run). `LLMQ_BENCH_AUTOTUNE`
//! likewise: `on` (the default: the matmuls' algorithms timed at start-up), `off` (the
//! heuristics' first), or `both` (on first).

mod cuda_common;

use llmq_compiler::ir::Init;
use llmq_compiler::plan::Plan;
use llmq_kernels::{DType, rng};
use llmq_runtime::backend::Backend;
use llmq_runtime::backend::cuda::{self, CudaBackend, CudaOptions};
use std::time::Instant;

/// The bytes of `n` values of `dtype` drawn by `value(i)`, computed on every core.
fn fill_bytes(n: usize, dtype: DType, value: impl Fn(u64) -> f32 + Sync) -> Vec<u8> {
    let size = dtype.size_bytes() as usize;
    let mut bytes = vec![0u8; n * size];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let per_thread = n.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (k, chunk) in bytes.chunks_mut(per_thread * size).enumerate() {
            let value = &value;
            scope.spawn(move || {
                for (j, out) in chunk.chunks_exact_mut(size).enumerate() {
                    let v = value((k * per_thread + j) as u64);
                    match dtype {
                        DType::BF16 => out.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                        DType::F32 => out.copy_from_slice(&v.to_le_bytes()),
                        other => panic!("weights in {other} are not initialised here"),
                    }
                }
            });
        }
    });
    bytes
}

/// Every weight (and its master copy) from its init rule, uniform for `Normal`.
fn init_weights(backend: &mut CudaBackend, plan: &Plan) {
    for (k, p) in plan.io.params.iter().enumerate() {
        let t = plan.tensor(p.weight);
        let n = t.ty.numel() as usize;
        let init = t.init.clone().unwrap_or(Init::Zeros);
        let value = |i: u64| -> f32 {
            match init {
                Init::Zeros => 0.0,
                Init::Ones => 1.0,
                // Uniform on [-a, a] has standard deviation a/√3.
                Init::Normal { std } => {
                    (std as f64 * 3f64.sqrt() * (2.0 * rng::uniform(1, k as u64, i) - 1.0)) as f32
                }
            }
        };
        for tensor in std::iter::once(p.weight).chain(p.master) {
            let dtype = plan.tensor(tensor).ty.dtype;
            backend
                .write_bytes(tensor, &fill_bytes(n, dtype, value))
                .unwrap();
        }
    }
}

/// MiB of GPU memory held by this process, as nvidia-smi reports it.
fn process_gpu_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut fields = l.split(',').map(str::trim);
        (fields.next()? == me).then(|| fields.next()?.parse().ok())?
    })
}

/// The settings an on/off variable asks for: `names[0]` (the default) is true, `names[1]`
/// false, `both` both, true first.
fn modes(variable: &str, names: [&str; 2]) -> Vec<bool> {
    let value = std::env::var(variable).unwrap_or_else(|_| names[0].into());
    match value.as_str() {
        v if v == names[0] => vec![true],
        v if v == names[1] => vec![false],
        "both" => vec![true, false],
        other => panic!(
            "{variable}: {}, {} or both, not {other:?}",
            names[0], names[1]
        ),
    }
}

fn bench(path: &str, steps: usize, options: CudaOptions) {
    let plan = Plan::from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let started = Instant::now();
    let mut gpu = CudaBackend::new(plan.clone(), options).unwrap_or_else(|e| panic!("{path}: {e}"));
    println!("BENCH {path}: {}", gpu.attention_summary());
    println!("BENCH {path}: {}", gpu.matmul_summary());
    init_weights(&mut gpu, &plan);
    cuda_common::quantize_weights(&mut gpu);
    let setup = started.elapsed().as_secs_f64();
    let io = plan.io.clone();
    let vocab = plan.model.dims["vocab"] as f64;
    let n = plan.tensor(io.tokens).ty.numel() as usize;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    let accum = plan.options.grad_accum as u64;
    // Each micro-batch's wall time (upload, forward, backward, loss read back) in the last step.
    let mut micro_times = Vec::new();
    for step in 1..=steps as u64 {
        let start = Instant::now();
        let mut loss = 0.0;
        micro_times.clear();
        for micro in 0..accum {
            let micro_start = Instant::now();
            let tokens: Vec<f32> = (0..n + 1)
                .map(|i| (rng::uniform(2, step * accum + micro, i as u64) * vocab).floor() as f32)
                .collect();
            gpu.write_f32(io.tokens, &tokens[..n]).unwrap();
            gpu.write_f32(io.targets, &tokens[1..]).unwrap();
            gpu.write_f32(io.dloss, &[1.0 / accum as f32]).unwrap();
            gpu.run_section("forward").unwrap();
            gpu.run_section("backward").unwrap();
            loss += gpu.read_f32(io.loss).unwrap()[0] / accum as f32;
            micro_times.push(micro_start.elapsed().as_secs_f64() * 1e3);
        }
        losses.push(loss);
        gpu.write_f32(io.hyper, &[1e-4, step as f32]).unwrap();
        gpu.run_section("optimizer").unwrap();
        cuda_common::quantize_weights(&mut gpu);
        let norm = gpu.read_f32(io.grad_norm).unwrap()[0];
        times.push(start.elapsed().as_secs_f64());
        assert!(
            norm.is_finite(),
            "{path}: step {step}: gradient norm {norm}"
        );
    }
    // The first step captures the CUDA graphs; with one micro-batch per step the second still
    // warms up, with several the first step's later micro-batches already replay.
    let warmup = if accum > 1 { 1 } else { 2 };
    let mut timed = times[warmup.min(times.len() - 1)..].to_vec();
    timed.sort_by(f64::total_cmp);
    let seconds = timed[timed.len() / 2];
    let tokens_per_second = plan.tokens_per_step() as f64 / seconds;
    let e = &plan.estimates;
    let mfu = e.model_flops_per_token * tokens_per_second / (plan.device.bf16_tflops * 1e12);
    println!(
        "BENCH {path}: {} {} batch {}x{} accum {}: {:.0} tok/s, step {:.1} ms (steps {:?} ms), \
         MFU {:.1}% of bf16 peak; estimate {:.0} tok/s, step {:.1} ms; arena {:.2} GiB, \
         host arena {:.2} GiB, process GPU memory {} MiB; loss {:.4} -> {:.4}; setup {setup:.1} s",
        plan.model.name,
        plan.options.precision,
        plan.options.batch,
        plan.options.seq,
        plan.options.grad_accum,
        tokens_per_second,
        seconds * 1e3,
        times.iter().map(|t| (t * 1e3).round()).collect::<Vec<_>>(),
        mfu * 100.0,
        e.tokens_per_second,
        e.step_seconds * 1e3,
        plan.device_arena_bytes as f64 / (1u64 << 30) as f64,
        plan.host_arena_bytes as f64 / (1u64 << 30) as f64,
        process_gpu_mib().map_or("?".into(), |m| m.to_string()),
        losses[0],
        losses[losses.len() - 1],
    );
    let first = micro_times[0];
    micro_times.sort_by(f64::total_cmp);
    println!(
        "BENCH {path}: micro-batches of the last step: first {first:.1} ms, min {:.1}, median \
         {:.1}, max {:.1}",
        micro_times[0],
        micro_times[micro_times.len() / 2],
        micro_times[micro_times.len() - 1]
    );
    if std::env::var("LLMQ_BENCH_PROFILE").is_ok_and(|v| v == "1") {
        profile(&mut gpu, &plan);
    }
}

/// Times every step once, alone, and prints each section's sum, then the ops that take longest
/// in all (`LLMQ_BENCH_PROFILE_OPS` of them, 24 unless set).
fn profile(gpu: &mut CudaBackend, plan: &Plan) {
    let shown = std::env::var("LLMQ_BENCH_PROFILE_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut per_op: Vec<(&str, usize, f64, f64)> = Vec::new();
    for section in &plan.sections {
        // The section as the steps run it (replayed as a graph where it is one), against the
        // sum of its steps timed alone below: the difference is what runs between kernels.
        gpu.synchronize().unwrap();
        let started = Instant::now();
        gpu.run_section(&section.name).unwrap();
        gpu.synchronize().unwrap();
        let replayed = started.elapsed().as_secs_f64();
        let times = gpu
            .step_times(section.start, section.end)
            .unwrap()
            .expect("the CUDA backend times steps");
        let steps = &plan.steps[section.start as usize..section.end as usize];
        println!(
            "PROFILE {}: section {} ({} steps) {:.1} ms replayed, {:.1} ms its steps alone, \
             estimate {:.1} ms",
            plan.model.name,
            section.name,
            steps.len(),
            replayed * 1e3,
            times.iter().sum::<f64>() * 1e3,
            steps.iter().map(|s| s.estimate.seconds).sum::<f64>() * 1e3
        );
        for (step, t) in steps.iter().zip(times) {
            let name = step.node.op.spec().name();
            match per_op.iter_mut().find(|e| e.0 == name) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t;
                    e.3 += step.estimate.seconds;
                }
                None => per_op.push((name, 1, t, step.estimate.seconds)),
            }
        }
    }
    per_op.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (name, count, measured, estimated) in per_op.iter().take(shown) {
        println!(
            "PROFILE {}: {name} ({count}) {:.1} ms, estimate {:.1} ms",
            plan.model.name,
            measured * 1e3,
            estimated * 1e3
        );
    }
}

#[test]
#[ignore = "needs a GPU and plan files: see the module doc"]
fn planned_models_train_at_this_many_tokens_per_second() {
    if let Err(why) = cuda::probe() {
        eprintln!("skipped, no GPU: {why}");
        return;
    }
    let plans = std::env::var("LLMQ_BENCH_PLANS").expect("LLMQ_BENCH_PLANS: plan files");
    let steps = std::env::var("LLMQ_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let attention_modes = modes("LLMQ_BENCH_ATTENTION", ["cudnn", "own"]);
    let autotune_modes = modes("LLMQ_BENCH_AUTOTUNE", ["on", "off"]);
    for path in plans.split_whitespace() {
        for &cudnn_attention in &attention_modes {
            for &autotune_matmuls in &autotune_modes {
                let options = CudaOptions {
                    cudnn_attention,
                    autotune_matmuls,
                    ..CudaOptions::default()
                };
                bench(path, steps, options);
            }
        }
    }
}
