//! The tensor-core attention kernels (`kernels/cuda/attention_mma.cu`, BF16, head sizes 64 and
//! 128) against the CPU reference (`kernels/src/ops/attention.rs`) on a GPU, at real shapes
//! (Qwen2.5-0.5B's 14/2 heads of 64, 16/8 heads of 128, sequence 1024) and at odd ones (a
//! sequence that is no multiple of the 64-row tile); `cudnn_matches_the_reference` does the same
//! for cuDNN's fused attention (`runtime/src/backend/cuda/cudnn.rs`), grouped and not, and
//! `cudnn_in_chunks_matches_the_reference` for it in chunks of sequences, as the backend runs it
//! where the whole batch's workspace does not fit. Without a GPU (CI), or without cuDNN for
//! those tests, each test prints why it skips and passes.
//!
//! Inputs are fresh random values every run (the seed is printed; `LLMQ_TEST_SEED` repeats
//! one), rounded to BF16 on the host so that both sides read the same numbers; `o` and `lse`
//! of the backward are the reference forward's. Outputs are poisoned with NaN before every
//! launch, so an element the kernel does not write fails. The backward runs twice: writing
//! its gradients, and accumulating them into random old values.
//!
//! Tolerance, per element: |gpu − cpu| ≤ u·(2·|cpu| + c·rms(cpu)), u = 2⁻⁸ for the BF16
//! outputs and 2⁻¹⁷ for the FP32 `lse`: the rule of cuda_conformance.rs, whose first term
//! allows the two results to round to neighbouring values and whose second allows cancellation
//! in long sums. c = 8 for the forward, as there. The backward's sums are longer and their
//! terms rounded: the kernels round P and dS to BF16 before their products (as every
//! flash-attention kernel does, a relative error of 2⁻⁹ per term), and dK, dV of an early key
//! sum heads/kv_heads × seq such terms, so the error follows the terms' size, not the
//! result's: c = 16 (measured on the H100: the worst of 2·10⁶ elements of dK at key 1 was
//! 1.1× the c = 8 bound). Besides, every BF16 output's relative L2 error ‖gpu − cpu‖/‖cpu‖
//! must be under u (measured: 1.4·10⁻³ to 2.5·10⁻³), which a wrong row or tile cannot meet.
//!
//! `timing` (ignored by default) times forward and backward (with its statistics kernel, and
//! cuDNN's beside them where cuDNN loads) at the shapes of Qwen2.5-0.5B and -1.5B, batch
//! 16 × 1024, and -7B, batch 8 and 2, with CUDA events (3 warm-up runs, median of 20) and
//! prints TFLOP/s with the op's own FLOP count (causal: half the score matrix). On the device:
//! `./cuda_attention --nocapture && ./cuda_attention --ignored timing --nocapture`.

mod cuda_common;

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, result};
use llmq_kernels::ops::{
    Attention, AttentionBackward, attention_backward_blocks_per_sm, attention_backward_splits,
};
use llmq_kernels::{DType, OpSpec, TensorType, View, ViewMut, rng};
use llmq_runtime::backend::cuda::cudnn::{self, Cudnn};
use llmq_runtime::backend::cuda::{launch, modules::Modules};
use std::ffi::c_void;
use std::sync::Arc;

/// True when a GPU is usable; otherwise says why the test skips.
/// The GPU's context, a stream and every kernel.
struct Gpu {
    stream: Arc<CudaStream>,
    modules: Modules,
    ctx: Arc<CudaContext>,
}

impl Gpu {
    fn new() -> Gpu {
        let ctx = CudaContext::new(0).expect("creating the context");
        // SAFETY: one stream orders every copy and launch of these tests.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().unwrap();
        let modules = Modules::load(&ctx, &format!("compute_{major}{minor}")).unwrap();
        Gpu {
            stream: ctx.default_stream(),
            modules,
            ctx,
        }
    }

    fn upload_bf16(&self, values: &[f32]) -> CudaSlice<u16> {
        let bits: Vec<u16> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect();
        self.stream.clone_htod(&bits).unwrap()
    }

    fn download_bf16(&self, slice: &CudaSlice<u16>) -> Vec<f32> {
        let bits = self.stream.clone_dtoh(slice).unwrap();
        bits.iter()
            .map(|&b| half::bf16::from_bits(b).to_f32())
            .collect()
    }

    /// Launches kernel `name` (grid, block and shared memory from launch.rs) with `args`.
    fn launch(&self, call: &launch::AttentionLaunch, args: &[u64]) {
        let function = self.modules.function(&call.name).unwrap();
        function
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                call.shared_bytes as i32,
            )
            .unwrap();
        let mut params: Vec<*mut c_void> = args
            .iter()
            .map(|a| a as *const u64 as *mut c_void)
            .collect();
        // SAFETY: `args` follow the kernel's documented order (pointers to buffers of the
        // shapes passed, then the sizes, one 8-byte slot each); grid, block and shared memory
        // are the backend's own.
        unsafe {
            result::launch_kernel(
                function.cu_function(),
                (u32::try_from(call.grid).unwrap(), 1, 1),
                (call.block, 1, 1),
                call.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .unwrap_or_else(|e| panic!("launching {}: {e}", call.name));
    }
}

/// The tensor-core backward's scratch (the backend's kernel scratch holds the same parts): the
/// row statistics, NaN-poisoned, and, for up to `splits` splits of the dK/dV walks, the
/// partials and counters.
struct BackwardScratch {
    stats: CudaSlice<f32>,
    partials: CudaSlice<f32>,
    counters: CudaSlice<i32>,
}

impl BackwardScratch {
    fn new(gpu: &Gpu, shape: &Shape, splits: u64) -> BackwardScratch {
        let [b, t, h, kv, d] = shape.dims();
        let stats = launch::attention_stats_bytes(b, t, h) as usize / 4;
        let (partials, counters) = launch::attention_split_bytes(b, t, kv, d, splits);
        let s = &gpu.stream;
        BackwardScratch {
            stats: s.clone_htod(&vec![f32::NAN; stats]).unwrap(),
            partials: s
                .clone_htod(&vec![f32::NAN; partials as usize / 4])
                .unwrap(),
            counters: s.alloc_zeros(counters as usize / 4).unwrap(),
        }
    }
}

/// The backward as the backend launches it, its dK/dV walks split `splits` ways: the row
/// statistics (attention_backward_stats_bf16), the counters zeroed, then the kernel. `inputs`
/// are q, k, v, o, lse, do; `grads` dq, dk, dv.
fn launch_backward(
    gpu: &Gpu,
    shape: &Shape,
    inputs: [u64; 6],
    grads: [u64; 3],
    scratch: &mut BackwardScratch,
    accumulate: u64,
    splits: u64,
) {
    let s = &gpu.stream;
    let [q, k, v, o, lse, d_o] = inputs;
    let [b, t, h, _, d] = shape.dims();
    let stats = ptr(s, &scratch.stats);
    gpu.launch(
        &launch::attention_stats_launch(b, t, h),
        &[o, d_o, lse, stats, b, t, h, d],
    );
    s.memset_zeros(&mut scratch.counters).unwrap();
    let mut args = vec![q, k, v, stats, d_o];
    args.extend(grads);
    args.extend([ptr(s, &scratch.partials), ptr(s, &scratch.counters)]);
    args.extend(shape.dims());
    args.extend([accumulate, splits]);
    gpu.launch(&shape.launch(true, splits), &args);
}

fn ptr<T>(stream: &CudaStream, slice: &CudaSlice<T>) -> u64 {
    slice.device_ptr(stream).0
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: u64,
    seq: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
}

impl Shape {
    fn q_shape(&self) -> [u64; 3] {
        [self.batch, self.seq, self.heads * self.head_dim]
    }
    fn kv_shape(&self) -> [u64; 3] {
        [self.batch, self.seq, self.kv_heads * self.head_dim]
    }
    fn lse_shape(&self) -> [u64; 3] {
        [self.batch, self.heads, self.seq]
    }
    fn dims(&self) -> [u64; 5] {
        [
            self.batch,
            self.seq,
            self.heads,
            self.kv_heads,
            self.head_dim,
        ]
    }
    /// The same shape in cuDNN's terms.
    fn cudnn(&self) -> cudnn::AttentionShape {
        let [batch, seq, heads, kv_heads, head_dim] = self.dims();
        cudnn::AttentionShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        }
    }
    fn launch(&self, backward: bool, splits: u64) -> launch::AttentionLaunch {
        let [b, t, h, kv, d] = self.dims();
        launch::attention_mma_launch(backward, b, t, h, kv, d, splits)
            .expect("a tensor-core head size")
    }
    /// The splits the backend gives the backward on this GPU.
    fn splits(&self, gpu: &Gpu) -> u64 {
        let sms = gpu
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .unwrap() as u64;
        let [b, t, h, kv, d] = self.dims();
        attention_backward_splits(b, t, h, kv, sms * attention_backward_blocks_per_sm(d))
    }
    fn forward_op(&self) -> Attention {
        Attention {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
    fn backward_op(&self) -> AttentionBackward {
        AttentionBackward {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }
    fn flops(&self, backward: bool) -> f64 {
        let q = TensorType::new(self.q_shape(), DType::BF16);
        let kv = TensorType::new(self.kv_shape(), DType::BF16);
        if backward {
            self.backward_op().flops(&[q, kv.clone(), kv], &[])
        } else {
            self.forward_op().flops(&[q, kv.clone(), kv], &[])
        }
    }
}

fn numel(shape: &[u64]) -> usize {
    shape.iter().product::<u64>() as usize
}

/// `n` values uniform in [lo, hi), rounded to BF16.
fn random_bf16(n: usize, lo: f64, hi: f64, seed: u64, stream: u64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = lo + (hi - lo) * rng::uniform(seed, stream, i as u64);
            half::bf16::from_f64(x).to_f32()
        })
        .collect()
}

/// `None` when `gpu` is within the tolerance rule (module documentation, `c` its cancellation
/// factor) of `cpu`, else the worst element or the relative L2 error; that error is returned
/// and printed either way.
fn compare(u: f32, c: f32, cpu: &[f32], gpu: &[f32]) -> (Option<String>, f64) {
    let norm = |f: &dyn Fn(usize) -> f64| (0..cpu.len()).map(f).sum::<f64>().sqrt();
    let cpu_norm = norm(&|i| (cpu[i] as f64).powi(2));
    let rel = norm(&|i| (gpu[i] as f64 - cpu[i] as f64).powi(2)) / cpu_norm.max(f64::MIN_POSITIVE);
    let rms = (cpu_norm / (cpu.len().max(1) as f64).sqrt()) as f32;
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&x, &g)) in cpu.iter().zip(gpu).enumerate() {
        let tol = u * (2.0 * x.abs() + c * rms);
        let err = (g - x).abs();
        let within = err <= tol; // false for NaN
        if !within && worst.is_none_or(|(_, e)| err / tol > e) {
            worst = Some((i, err / tol));
        }
    }
    let rel = if rel.is_nan() { f64::INFINITY } else { rel };
    let verdict = match worst {
        Some((i, ratio)) => Some(format!(
            "element {i}: gpu {} cpu {} ({ratio:.1}× the tolerance, rms {rms:e})",
            gpu[i], cpu[i]
        )),
        // The L2 bound is for the BF16 outputs; FP32 lse meets the element rule far tighter.
        None if u == BF16_U && rel >= BF16_U as f64 => {
            Some(format!("relative L2 error {rel:.2e} ≥ u = {BF16_U:e}"))
        }
        None => None,
    };
    (verdict, rel)
}

const BF16_U: f32 = 1.0 / 256.0;
const F32_U: f32 = 1.0 / 131072.0;
/// The cancellation factors c of the forward's and the backward's outputs.
const FORWARD_C: f32 = 8.0;
const BACKWARD_C: f32 = 16.0;
/// cuDNN's dK and dV of grouped heads: its graph computes them per query head in BF16 and then
/// sums each group, one more rounding per head than the own kernels' FP32 walk (measured on
/// the H200: the worst of 2·10⁶ elements of dV, heads 16/8 of 128, 1.1× the c = 16 bound).
const CUDNN_GROUPED_C: f32 = 24.0;

/// Random inputs at one shape and the CPU reference's results for them.
struct Case {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
    /// The forward's output, and that output rounded to BF16 as the GPU stores it (the
    /// backward's input).
    o: Vec<f32>,
    o_bf16: Vec<f32>,
    lse: Vec<f32>,
    /// dq, dk, dv.
    grads: [Vec<f32>; 3],
}

impl Case {
    fn new(shape: Shape, seed: u64) -> Case {
        let (nq, nkv, nl) = (
            numel(&shape.q_shape()),
            numel(&shape.kv_shape()),
            numel(&shape.lse_shape()),
        );
        // Scores q·k/√d with a standard deviation near 1.3: peaked enough to test the maximum.
        let q = random_bf16(nq, -2.0, 2.0, seed, 0);
        let k = random_bf16(nkv, -2.0, 2.0, seed, 1);
        let v = random_bf16(nkv, -1.0, 1.0, seed, 2);
        let d_o = random_bf16(nq, -1.0, 1.0, seed, 3);
        let (q_shape, kv_shape, lse_shape) = (shape.q_shape(), shape.kv_shape(), shape.lse_shape());
        let mut o = vec![0.0f32; nq];
        let mut lse = vec![0.0f32; nl];
        let view = |shape, data| View { shape, data };
        shape
            .forward_op()
            .cpu(
                &[view(&q_shape, &q), view(&kv_shape, &k), view(&kv_shape, &v)],
                &mut [
                    ViewMut {
                        shape: &q_shape,
                        data: &mut o,
                    },
                    ViewMut {
                        shape: &lse_shape,
                        data: &mut lse,
                    },
                ],
            )
            .unwrap();
        let o_bf16: Vec<f32> = o
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        let mut grads = [vec![0.0f32; nq], vec![0.0f32; nkv], vec![0.0f32; nkv]];
        {
            let [dq, dk, dv] = &mut grads;
            shape
                .backward_op()
                .cpu(
                    &[
                        view(&q_shape, &q),
                        view(&kv_shape, &k),
                        view(&kv_shape, &v),
                        view(&q_shape, &o_bf16),
                        view(&lse_shape, &lse),
                        view(&q_shape, &d_o),
                    ],
                    &mut [
                        ViewMut {
                            shape: &q_shape,
                            data: dq,
                        },
                        ViewMut {
                            shape: &kv_shape,
                            data: dk,
                        },
                        ViewMut {
                            shape: &kv_shape,
                            data: dv,
                        },
                    ],
                )
                .unwrap();
        }
        Case {
            q,
            k,
            v,
            d_o,
            o,
            o_bf16,
            lse,
            grads,
        }
    }
}

/// Prints every verdict and collects the failures.
struct Verdicts {
    label: String,
    failures: Vec<String>,
}

impl Verdicts {
    fn check(&mut self, name: &str, u: f32, c: f32, cpu: &[f32], got: &[f32]) {
        let (bad, rel) = compare(u, c, cpu, got);
        let line = format!(
            "{} {name:<14} rel. L2 error {rel:.2e} {}",
            self.label,
            bad.as_deref().unwrap_or("ok")
        );
        println!("{line}");
        if bad.is_some() {
            self.failures.push(line);
        }
    }
}

/// Forward, then backward writing and accumulating, at `shape` against the CPU reference;
/// returns the failures (every verdict is printed).
fn check(shape: Shape, seed: u64) -> Vec<String> {
    let gpu = Gpu::new();
    let s = &gpu.stream;
    let case = Case::new(shape, seed);
    let Case {
        q,
        k,
        v,
        d_o,
        o,
        o_bf16,
        lse,
        grads,
        ..
    } = &case;
    let (nq, nl) = (q.len(), lse.len());
    let mut verdicts = Verdicts {
        label: format!("{shape:?}"),
        failures: Vec::new(),
    };
    let mut verdict =
        |name: &str, u: f32, c: f32, cpu: &[f32], got: &[f32]| verdicts.check(name, u, c, cpu, got);

    let dims = shape.dims();
    let (gq, gk, gv, gdo) = (
        gpu.upload_bf16(q),
        gpu.upload_bf16(k),
        gpu.upload_bf16(v),
        gpu.upload_bf16(d_o),
    );
    // Forward into NaN-poisoned outputs.
    let go = gpu.upload_bf16(&vec![f32::NAN; nq]);
    let glse = s.clone_htod(&vec![f32::NAN; nl]).unwrap();
    let mut args = vec![
        ptr(s, &gq),
        ptr(s, &gk),
        ptr(s, &gv),
        ptr(s, &go),
        ptr(s, &glse),
    ];
    args.extend(dims);
    gpu.launch(&shape.launch(false, 1), &args);
    verdict("o", BF16_U, FORWARD_C, o, &gpu.download_bf16(&go));
    verdict("lse", F32_U, FORWARD_C, lse, &s.clone_dtoh(&glse).unwrap());

    // Backward from the reference o and lse: writing (into NaN), then accumulating.
    let go = gpu.upload_bf16(o_bf16);
    let glse = s.clone_htod(lse).unwrap();
    // Unsplit, split two ways and one way per head of the group (uneven shares of the walk).
    let group = shape.heads / shape.kv_heads;
    let mut all_splits = vec![1, 2.min(group), group];
    all_splits.dedup();
    let mut scratch = BackwardScratch::new(&gpu, &shape, group);
    let [q, k, v, o] = [&gq, &gk, &gv, &go].map(|x| ptr(s, x));
    let inputs = [q, k, v, o, ptr(s, &glse), ptr(s, &gdo)];
    for (splits, accumulate) in all_splits.iter().flat_map(|&n| [(n, 0u64), (n, 1)]) {
        let old: Vec<Vec<f32>> = grads
            .iter()
            .enumerate()
            .map(|(i, g)| match accumulate {
                0 => vec![f32::NAN; g.len()],
                _ => random_bf16(g.len(), -1.0, 1.0, seed, 10 + i as u64),
            })
            .collect();
        let outs: Vec<CudaSlice<u16>> = old.iter().map(|x| gpu.upload_bf16(x)).collect();
        let out_ptrs = [0, 1, 2].map(|i| ptr(s, &outs[i]));
        launch_backward(
            &gpu,
            &shape,
            inputs,
            out_ptrs,
            &mut scratch,
            accumulate,
            splits,
        );
        for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let expected: Vec<f32> = match accumulate {
                0 => grads[i].clone(),
                _ => grads[i].iter().zip(&old[i]).map(|(g, o)| g + o).collect(),
            };
            let name = format!("{name} acc={accumulate} splits={splits}");
            verdict(
                &name,
                BF16_U,
                BACKWARD_C,
                &expected,
                &gpu.download_bf16(&outs[i]),
            );
        }
    }
    verdicts.failures
}

fn check_all(test: &str, shapes: &[Shape]) {
    if !cuda_common::gpu_present(test) {
        return;
    }
    let seed = cuda_common::seed();
    let failures: Vec<String> = shapes.iter().flat_map(|&s| check(s, seed)).collect();
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n"));
}

#[test]
fn qwen_0_5b_heads_of_64() {
    check_all(
        "qwen_0_5b_heads_of_64",
        &[Shape {
            batch: 2,
            seq: 1024,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
        }],
    );
}

#[test]
fn heads_of_128() {
    check_all(
        "heads_of_128",
        &[Shape {
            batch: 2,
            seq: 1024,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
        }],
    );
}

#[test]
fn sequences_not_a_multiple_of_the_tile() {
    check_all(
        "sequences_not_a_multiple_of_the_tile",
        &[
            Shape {
                batch: 3,
                seq: 200,
                heads: 4,
                kv_heads: 2,
                head_dim: 64,
            },
            Shape {
                batch: 1,
                seq: 77,
                heads: 6,
                kv_heads: 3,
                head_dim: 128,
            },
            Shape {
                batch: 2,
                seq: 5,
                heads: 2,
                kv_heads: 1,
                head_dim: 64,
            },
        ],
    );
}

/// cuDNN's fused attention (backend/cuda/cudnn.rs) on the GPU: its plans and the device
/// memory one execution binds.
struct CudnnAttention {
    forward: cudnn::AttentionPlan,
    backward: cudnn::AttentionPlan,
    workspace: CudaSlice<u8>,
}

impl CudnnAttention {
    /// Both plans at `shape`, or why cuDNN cannot build them.
    fn new(gpu: &Gpu, dnn: &Cudnn, shape: &Shape) -> Result<CudnnAttention, String> {
        let at = shape.cudnn();
        let forward = dnn.attention_forward(&at)?;
        let backward = dnn.attention_backward(&at)?;
        let bytes = forward.workspace_bytes.max(backward.workspace_bytes).max(1);
        let workspace = gpu.stream.alloc_zeros(bytes as usize).unwrap();
        Ok(CudnnAttention {
            forward,
            backward,
            workspace,
        })
    }

    /// Runs the forward (`tensors`: q, k, v, o, lse) or the backward (q, k, v, o, lse, do,
    /// dq, dk, dv) on the GPU's stream.
    fn run(&self, gpu: &Gpu, dnn: &Cudnn, backward: bool, tensors: &[u64]) {
        let plan = if backward {
            &self.backward
        } else {
            &self.forward
        };
        let pack = plan
            .bind(tensors, ptr(&gpu.stream, &self.workspace))
            .unwrap();
        // SAFETY: the tensors are live buffers of the plan's shapes, the workspace is the
        // plan's size, and one stream orders everything.
        unsafe { dnn.execute(plan, &pack, gpu.stream.cu_stream()) }.unwrap();
    }
}

/// The GPU and cuDNN, when both are there, or None (the test says why it skips).
fn gpu_with_cudnn(test: &str) -> Option<(Gpu, Cudnn)> {
    if !cuda_common::gpu_present(test) {
        return None;
    }
    let gpu = Gpu::new();
    cudnn_or_skip(test).map(|dnn| (gpu, dnn))
}

/// cuDNN, when it loads, or None (the test says why it skips).
fn cudnn_or_skip(test: &str) -> Option<Cudnn> {
    match Cudnn::new() {
        Ok(dnn) => {
            println!("cuDNN {}", dnn.version());
            Some(dnn)
        }
        Err(why) => {
            eprintln!("{test}: skipped: {why}");
            None
        }
    }
}

/// cuDNN's forward and backward against the CPU reference at Qwen2.5-0.5B's heads (grouped
/// 7 to 1), heads of 128 (grouped 2 to 1) and one head per key/value head, with the
/// tolerances of the own kernels.
#[test]
fn cudnn_matches_the_reference() {
    let test = "cudnn_matches_the_reference";
    let Some((gpu, dnn)) = gpu_with_cudnn(test) else {
        return;
    };
    let seed = cuda_common::seed();
    let mut failures = Vec::new();
    for shape in [
        Shape {
            batch: 2,
            seq: 1024,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
        },
        Shape {
            batch: 2,
            seq: 1024,
            heads: 16,
            kv_heads: 8,
            head_dim: 128,
        },
        Shape {
            batch: 3,
            seq: 256,
            heads: 4,
            kv_heads: 4,
            head_dim: 64,
        },
    ] {
        let attention = match CudnnAttention::new(&gpu, &dnn, &shape) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{shape:?}: {e}"));
                continue;
            }
        };
        println!(
            "{shape:?} cuDNN workspaces: forward {} B, backward {} B",
            attention.forward.workspace_bytes, attention.backward.workspace_bytes
        );
        let label = format!("cuDNN {shape:?}");
        let run = |backward: bool, tensors: &[u64]| attention.run(&gpu, &dnn, backward, tensors);
        failures.extend(check_cudnn(&gpu, shape, seed, label, &run));
    }
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n"));
}

/// cuDNN's attention in chunks of sequences, as the backend runs it where the whole batch's
/// workspace outgrows what the plan leaves free (`AttentionPlans::prepare`): a budget of half
/// the whole batch's backward workspace must make both directions run in chunks, one
/// execution per chunk with every tensor offset by the chunk's share (as `launch.rs` does), and
/// the results must match the CPU reference over the whole batch.
#[test]
fn cudnn_in_chunks_matches_the_reference() {
    let test = "cudnn_in_chunks_matches_the_reference";
    let Some((gpu, dnn)) = gpu_with_cudnn(test) else {
        return;
    };
    let shape = Shape {
        batch: 4,
        seq: 1024,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
    };
    let at = shape.cudnn();
    let batch = shape.batch;
    let whole = dnn.attention_backward(&at).unwrap().workspace_bytes;
    let mut plans = cudnn::AttentionPlans::new(whole / 2).unwrap();
    let served = [false, true].map(|backward| plans.prepare(at, backward));
    println!("{}", plans.summary());
    let [Some(forward_plan), Some(backward_plan)] = served else {
        panic!(
            "{test}: cuDNN serves no chunk of {shape:?} within {} B",
            whole / 2
        );
    };
    assert!(
        backward_plan.1 < batch,
        "{test}: the backward ran whole within half its workspace: {served:?}"
    );
    let workspace = gpu
        .stream
        .alloc_zeros::<u8>(plans.workspace_bytes().max(1) as usize)
        .unwrap();
    // Per tensor of the order the plans bind (q, k, v, o, lse, then do, dq, dk, dv), its
    // elements per sequence and their size.
    let per_sequence = |backward: bool| {
        let [q, kv, lse] = [shape.q_shape(), shape.kv_shape(), shape.lse_shape()]
            .map(|s| numel(&s) as u64 / batch);
        let mut bytes = vec![q * 2, kv * 2, kv * 2, q * 2, lse * 4];
        if backward {
            bytes.extend([q * 2, q * 2, kv * 2, kv * 2]);
        }
        bytes
    };
    let run = |backward: bool, tensors: &[u64]| {
        let (index, chunk) = if backward {
            backward_plan
        } else {
            forward_plan
        };
        let step = per_sequence(backward);
        for c in 0..batch / chunk {
            let part: Vec<u64> = tensors
                .iter()
                .zip(&step)
                .map(|(&at, &bytes)| at + c * chunk * bytes)
                .collect();
            // SAFETY: each chunk's tensors lie within the whole batch's live buffers, the
            // workspace holds the plans' largest, and one stream orders everything.
            unsafe {
                plans.execute(
                    index,
                    &part,
                    ptr(&gpu.stream, &workspace),
                    gpu.stream.cu_stream(),
                )
            }
            .unwrap();
        }
    };
    let label = format!("cuDNN in chunks {served:?} {shape:?}");
    let failures = check_cudnn(&gpu, shape, cuda_common::seed(), label, &run);
    assert!(failures.is_empty(), "{test}:\n{}", failures.join("\n"));
}

/// Forward, then backward, through `run` (`tensors`: q, k, v, o, lse for the forward; q, k,
/// v, o, lse, do, dq, dk, dv for the backward) at `shape` against the CPU reference; returns
/// the failures (every verdict is printed).
fn check_cudnn(
    gpu: &Gpu,
    shape: Shape,
    seed: u64,
    label: String,
    run: &dyn Fn(bool, &[u64]),
) -> Vec<String> {
    let s = &gpu.stream;
    let case = Case::new(shape, seed);
    let mut verdicts = Verdicts {
        label,
        failures: Vec::new(),
    };
    let [q, k, v, d_o, o_bf16] =
        [&case.q, &case.k, &case.v, &case.d_o, &case.o_bf16].map(|x| gpu.upload_bf16(x));
    let go = gpu.upload_bf16(&vec![f32::NAN; case.q.len()]);
    let glse = s.clone_htod(&vec![f32::NAN; case.lse.len()]).unwrap();
    let [pq, pk, pv] = [&q, &k, &v].map(|x| ptr(s, x));
    run(false, &[pq, pk, pv, ptr(s, &go), ptr(s, &glse)]);
    verdicts.check("o", BF16_U, FORWARD_C, &case.o, &gpu.download_bf16(&go));
    let lse = s.clone_dtoh(&glse).unwrap();
    verdicts.check("lse", F32_U, FORWARD_C, &case.lse, &lse);
    let glse = s.clone_htod(&case.lse).unwrap();
    let grads: Vec<CudaSlice<u16>> = case
        .grads
        .iter()
        .map(|g| gpu.upload_bf16(&vec![f32::NAN; g.len()]))
        .collect();
    let mut tensors = vec![pq, pk, pv, ptr(s, &o_bf16), ptr(s, &glse), ptr(s, &d_o)];
    tensors.extend(grads.iter().map(|g| ptr(s, g)));
    run(true, &tensors);
    for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let got = gpu.download_bf16(&grads[i]);
        let c = if i > 0 && shape.heads > shape.kv_heads {
            CUDNN_GROUPED_C
        } else {
            BACKWARD_C
        };
        verdicts.check(name, BF16_U, c, &case.grads[i], &got);
    }
    verdicts.failures
}

/// Median milliseconds of `runs` runs of `work` after 3 warm-up runs, by CUDA events.
fn time_ms(gpu: &Gpu, work: &mut dyn FnMut(), runs: usize) -> f64 {
    for _ in 0..3 {
        work();
    }
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = (
        gpu.ctx.new_event(flags).unwrap(),
        gpu.ctx.new_event(flags).unwrap(),
    );
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            start.record(&gpu.stream).unwrap();
            work();
            end.record(&gpu.stream).unwrap();
            end.synchronize().unwrap();
            start.elapsed_ms(&end).unwrap() as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

#[test]
#[ignore = "a benchmark: run on the device with --ignored timing"]
fn timing() {
    if !cuda_common::gpu_present("timing") {
        return;
    }
    let gpu = Gpu::new();
    let s = &gpu.stream;
    let seed = cuda_common::seed();
    println!("{}", gpu.ctx.name().unwrap_or_default());
    let dnn = cudnn_or_skip("timing (cuDNN)");
    for shape in [
        Shape {
            batch: 16,
            seq: 1024,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
        },
        Shape {
            batch: 16,
            seq: 1024,
            heads: 12,
            kv_heads: 2,
            head_dim: 128,
        },
        // Qwen2.5-7B at the micro-batches of 80 GB and of 16 GB.
        Shape {
            batch: 8,
            seq: 1024,
            heads: 28,
            kv_heads: 4,
            head_dim: 128,
        },
        Shape {
            batch: 2,
            seq: 1024,
            heads: 28,
            kv_heads: 4,
            head_dim: 128,
        },
    ] {
        let (nq, nkv) = (numel(&shape.q_shape()), numel(&shape.kv_shape()));
        let nl = numel(&shape.lse_shape());
        let q = gpu.upload_bf16(&random_bf16(nq, -2.0, 2.0, seed, 0));
        let k = gpu.upload_bf16(&random_bf16(nkv, -2.0, 2.0, seed, 1));
        let v = gpu.upload_bf16(&random_bf16(nkv, -1.0, 1.0, seed, 2));
        let d_o = gpu.upload_bf16(&random_bf16(nq, -1.0, 1.0, seed, 3));
        let o = gpu.upload_bf16(&vec![0.0; nq]);
        let lse = s.clone_htod(&vec![0.0f32; nl]).unwrap();
        let grads = [nq, nkv, nkv].map(|n| gpu.upload_bf16(&vec![0.0; n]));
        let mut fwd = vec![ptr(s, &q), ptr(s, &k), ptr(s, &v), ptr(s, &o), ptr(s, &lse)];
        fwd.extend(shape.dims());
        // The forward first: its o and lse are the backward's inputs.
        let ms = time_ms(&gpu, &mut || gpu.launch(&shape.launch(false, 1), &fwd), 20);
        let report = |backward: bool, splits: u64, ms: f64| {
            let tflops = shape.flops(backward) / (ms * 1e-3) / 1e12;
            let name = shape.launch(backward, splits).name;
            println!(
                "timing {shape:?} {name:<28} splits {splits} {ms:8.3} ms {tflops:6.1} TFLOP/s"
            );
        };
        report(false, 1, ms);
        // The backward with the splits the backend picks, and unsplit when that is more.
        let [q, k, v, o] = [&q, &k, &v, &o].map(|x| ptr(s, x));
        let inputs = [q, k, v, o, ptr(s, &lse), ptr(s, &d_o)];
        let grads = [0, 1, 2].map(|i| ptr(s, &grads[i]));
        let picked = shape.splits(&gpu);
        let mut scratch = BackwardScratch::new(&gpu, &shape, picked);
        let mut all_splits = vec![picked, 1];
        all_splits.dedup();
        for splits in all_splits {
            let mut backward =
                || launch_backward(&gpu, &shape, inputs, grads, &mut scratch, 0, splits);
            report(true, splits, time_ms(&gpu, &mut backward, 20));
        }
        let Some(dnn) = &dnn else { continue };
        match CudnnAttention::new(&gpu, dnn, &shape) {
            Ok(attention) => {
                let forward = [q, k, v, o, ptr(s, &lse)];
                let mut backward = inputs.to_vec();
                backward.extend(grads);
                for (is_backward, tensors) in [(false, &forward[..]), (true, &backward[..])] {
                    let ms = time_ms(
                        &gpu,
                        &mut || attention.run(&gpu, dnn, is_backward, tensors),
                        20,
                    );
                    let tflops = shape.flops(is_backward) / (ms * 1e-3) / 1e12;
                    let name = if is_backward {
                        "cuDNN backward"
                    } else {
                        "cuDNN forward"
                    };
                    println!(
                        "timing {shape:?} {name:<28}          {ms:8.3} ms {tflops:6.1} TFLOP/s"
                    );
                }
            }
            Err(e) => println!("timing {shape:?} cuDNN: {e}"),
        }
    }
}

/// Without a GPU too: tensor-core launches exist for heads of 64 and 128 only, and each fits
/// the blocks per SM its kernel is built for (attention_mma.cu: MMA_ENTRIES; 4 and 3 by launch
/// bounds for heads of 64, 2 for 128) in the 228 KiB of shared memory of an sm_90 SM (1 KiB of
/// it reserved per block).
#[test]
fn launches_fit_the_shared_memory_their_launch_bounds_ask_for() {
    for (d, forward_blocks, backward_blocks) in [(64, 4, 3), (128, 2, 2)] {
        for (backward, blocks) in [(false, forward_blocks), (true, backward_blocks)] {
            let call = launch::attention_mma_launch(backward, 2, 200, 4, 2, d, 1).unwrap();
            assert!(
                blocks * (call.shared_bytes + 1024) <= 228 * 1024,
                "{call:?}: {blocks} blocks do not fit"
            );
            let tiles = 200u64.div_ceil(64);
            let grid = 2 * 4 * tiles + if backward { 2 * 2 * tiles } else { 0 };
            assert_eq!(call.grid, grid, "{call:?}");
            // Split walks: as many dK/dV blocks again per split.
            let split = launch::attention_mma_launch(backward, 2, 200, 4, 2, d, 2).unwrap();
            let more = if backward { 2 * 2 * tiles } else { 0 };
            assert_eq!(split.grid, grid + more, "{split:?}");
        }
    }
    // The statistics kernel: eight threads for every padded query row, and no block more.
    for (batch, seq, heads) in [(2, 200, 4), (3, 1000, 14), (1, 64, 1)] {
        let call = launch::attention_stats_launch(batch, seq, heads);
        let threads = 8 * batch * heads * seq.next_multiple_of(64);
        let block = call.block as u64;
        assert!(
            call.grid * block >= threads && (call.grid - 1) * block < threads,
            "{call:?}"
        );
        assert_eq!(
            launch::attention_stats_bytes(batch, seq, heads),
            threads / 8 * 2 * 4
        );
    }
    for d in [16, 32, 96, 256] {
        assert_eq!(launch::attention_mma_launch(false, 1, 64, 2, 1, d, 1), None);
    }
}
