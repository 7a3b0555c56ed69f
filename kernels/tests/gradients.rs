//! Finite-difference checks of every differentiable op's backward rule.
//!
//! One generic harness ([`check_gradients`]) draws random inputs, runs the op's FP32 CPU
//! reference, forms the scalar `L = Σ out₀ · R` with a random projection `R`, interprets the
//! op's backward rule (`BackwardStep::Apply` through each step op's own `cpu`, and
//! `PassThrough`) with `GradOutput(0) = R`, and compares every input gradient with a central
//! difference of `L`. Integer inputs (token ids, targets) must get no gradient.
//!
//! Seeds come from the clock and a counter and are printed on failure; set `LLMQ_GRAD_SEED` to
//! replay one.

use llmq_kernels::interpret::{Value, run_backward_rule, run_op};
use llmq_kernels::ops::*;
use llmq_kernels::{BackwardStep, DType, Op, Ref, TensorType, rng};
use std::sync::atomic::{AtomicU64, Ordering};

/// How an input is filled.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// Standard normal values on a 2⁻¹⁰ grid, never zero (differentiated).
    Normal,
    /// Integer ids in `[0, below)` stored as f32; with `ignored`, some are −1 (not differentiated).
    Ids { below: u64, ignored: bool },
}

/// Grid of the random inputs: values are multiples of 2⁻¹⁰ below 8 in magnitude, so `x ± H`
/// and `x ± 2H` (H = 2⁻⁷) are exact in FP32 and the step of the difference is exactly H.
const GRID: f32 = 1.0 / 1024.0;
/// The finite-difference step, a power of two (see [`GRID`]).
const H: f32 = 1.0 / 128.0;
/// Unit roundoff of FP32.
const U: f64 = f32::EPSILON as f64 / 2.0;

fn next_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if let Ok(s) = std::env::var("LLMQ_GRAD_SEED") {
        return s.parse().expect("LLMQ_GRAD_SEED must be an integer");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_nanos() as u64;
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn draw(ty: &TensorType, fill: Fill, seed: u64, stream: u64) -> Value {
    let n = ty.numel();
    let data = (0..n)
        .map(|i| match fill {
            Fill::Normal => {
                let v = (rng::normal(seed, stream, i) as f32).clamp(-7.0, 7.0);
                let v = (v / GRID).round() * GRID;
                if v == 0.0 { GRID } else { v }
            }
            Fill::Ids { below, ignored } => {
                // With `ignored`, the first id is always −1, the last never (so some target
                // counts), and one in four of the others.
                let u = rng::uniform(seed, stream, i);
                let coin = rng::uniform(seed, stream + 1000, i) < 0.25;
                if ignored && (i == 0 || (coin && i + 1 < n)) {
                    -1.0
                } else {
                    (u * below as f64).floor() as f32
                }
            }
        })
        .collect();
    Value {
        ty: ty.clone(),
        data,
    }
}

/// `L = Σ out₀ · R` in f64, and the out₀ it was formed from.
fn loss(op: &Op, inputs: &[Value], r: &Value) -> Result<(f64, Vec<f32>), String> {
    let refs: Vec<&Value> = inputs.iter().collect();
    let outs = run_op(op, &refs)?;
    let l = outs[0]
        .data
        .iter()
        .zip(&r.data)
        .map(|(&o, &r)| o as f64 * r as f64)
        .sum();
    Ok((l, outs[0].data.clone()))
}

/// One input of a case: its type and how to fill it.
struct Arg {
    ty: TensorType,
    fill: Fill,
}

fn arg(shape: &[u64], fill: Fill) -> Arg {
    let dtype = match fill {
        Fill::Normal => DType::F32,
        Fill::Ids { .. } => DType::I32,
    };
    Arg {
        ty: TensorType::new(shape, dtype),
        fill,
    }
}

fn float(shape: &[u64]) -> Arg {
    arg(shape, Fill::Normal)
}

/// Checks `op`'s own backward rule (see [`check_rule`]); panics with a report on failure.
fn check_gradients(op: impl Into<Op>, args: &[Arg], reduction: usize) {
    let op = op.into();
    let types: Vec<TensorType> = args.iter().map(|a| a.ty.clone()).collect();
    let rule = op
        .spec()
        .backward(&types)
        .unwrap_or_else(|| panic!("{op} has no backward rule"));
    let seed = next_seed();
    if let Err(report) = check_rule(&op, &rule, args, reduction, seed) {
        panic!(
            "{op}: gradient check failed (seed {seed}; LLMQ_GRAD_SEED={seed} replays it)\n{report}"
        );
    }
}

/// Compares the gradients of `rule` with central differences of `L = Σ out₀ · R`.
///
/// The numeric derivative is Richardson's extrapolation of two central differences,
/// `(4·D(H) − D(2H)) / 3`, whose truncation error is O(H⁴) ≈ 4·10⁻⁹ times a fifth derivative
/// (O(1) for these smooth ops and O(1) inputs): negligible. What remains is FP32 rounding:
///
/// * each forward output carries a relative error of at most γ = (K + 8)·u, where u = 2⁻²⁴ and
///   K the longest FP32 accumulation behind one output (`reduction`; the 8 covers the few
///   extra roundings of exp, ln, sqrt, sin and cos), so one evaluation of `L` is off by at most
///   γ·S, with `S = Σ |out₀ₖ · Rₖ|` over the outputs the perturbation changes (the others are
///   bit-identical between evaluations and cancel exactly);
/// * that gives |D(H) error| ≤ γ·S/H, and for the extrapolation (4/3 + 1/6)·γ·S/H = 1.5·γ·S/H;
/// * the backward rule's own FP32 error is γ times the magnitudes it sums, bounded here by the
///   largest gradient of the tensor.
///
/// The tolerance is four times that bound: `tol = 4·(1.5·γ·S/H + γ·max|g|)`. With K ≈ 16 and
/// S ≈ 10 it is about 5·10⁻³, against gradients of order one, so any wrong term, factor or index
/// fails while rounding never does.
fn check_rule(
    op: &Op,
    rule: &[BackwardStep],
    args: &[Arg],
    reduction: usize,
    seed: u64,
) -> Result<(), String> {
    let inputs: Vec<Value> = args
        .iter()
        .enumerate()
        .map(|(i, a)| draw(&a.ty, a.fill, seed, i as u64))
        .collect();
    let refs: Vec<&Value> = inputs.iter().collect();
    let outputs = run_op(op, &refs)?;
    let r = draw(
        &outputs[0].ty.with_dtype(DType::F32),
        Fill::Normal,
        seed,
        100,
    );
    // L depends on out₀ only, so the other outputs' gradients are zero.
    let mut grad_outputs = vec![r.clone()];
    grad_outputs.extend(
        outputs[1..]
            .iter()
            .map(|o| Value::filled(o.ty.clone(), 0.0)),
    );
    let grads = run_backward_rule(rule, &inputs, &outputs, &grad_outputs)?;
    let (_, base) = loss(op, &inputs, &r)?;
    let gamma = (reduction + 8) as f64 * U;

    let mut report = String::new();
    for (i, (arg, grad)) in args.iter().zip(&grads).enumerate() {
        let name = op.spec().input_names()[i];
        let grad = match (arg.fill, grad) {
            (Fill::Ids { .. }, None) => continue,
            (Fill::Ids { .. }, Some(_)) => {
                report += &format!("integer input `{name}` received a gradient\n");
                continue;
            }
            (Fill::Normal, None) => {
                report += &format!("input `{name}` received no gradient\n");
                continue;
            }
            (Fill::Normal, Some(g)) => g,
        };
        if grad.ty.shape != arg.ty.shape {
            report += &format!(
                "gradient of `{name}` has shape {:?}, the input {:?}\n",
                grad.ty.shape, arg.ty.shape
            );
            continue;
        }
        let gmax = grad.data.iter().fold(0f64, |m, &g| m.max(g.abs() as f64));
        let mut mismatches = Vec::new();
        let (mut max_abs, mut max_rel, mut max_tol) = (0f64, 0f64, 0f64);
        for j in 0..grad.data.len() {
            let mut evals = [0f64; 4];
            let mut s = vec![0f64; base.len()];
            for (e, step) in [-2.0, -1.0, 1.0, 2.0].into_iter().enumerate() {
                let mut x = inputs.clone();
                x[i].data[j] += step * H;
                let (l, out) = loss(op, &x, &r)?;
                evals[e] = l;
                for (k, (&o, &b)) in out.iter().zip(&base).enumerate() {
                    if o.to_bits() != b.to_bits() {
                        s[k] = s[k].max((o as f64 * r.data[k] as f64).abs());
                    }
                }
            }
            let h = H as f64;
            let d1 = (evals[2] - evals[1]) / (2.0 * h);
            let d2 = (evals[3] - evals[0]) / (4.0 * h);
            let numeric = (4.0 * d1 - d2) / 3.0;
            let analytic = grad.data[j] as f64;
            let s: f64 = s.iter().sum();
            let tol = 4.0 * (1.5 * gamma * s / h + gamma * gmax);
            let err = (analytic - numeric).abs();
            let rel = err / numeric.abs().max(f64::MIN_POSITIVE);
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(rel);
            max_tol = max_tol.max(tol);
            if err.is_nan() || err > tol {
                mismatches.push((j, analytic, numeric, err, tol));
            }
        }
        if !mismatches.is_empty() {
            report += &format!(
                "gradient of `{name}` {:?}: {} of {} elements mismatch; max abs error {max_abs:.3e}, \
                 max rel error {max_rel:.3e}, largest tolerance {max_tol:.3e}\n",
                arg.ty.shape,
                mismatches.len(),
                grad.data.len()
            );
            for (j, a, n, err, tol) in mismatches.iter().take(5) {
                report += &format!(
                    "  [{j}] analytic {a:+.6e}  numeric {n:+.6e}  error {err:.3e} > tol {tol:.3e}\n"
                );
            }
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

#[test]
fn embedding() {
    // Six tokens over five rows: some row is looked up twice, so the scatter-add accumulates.
    let ids = Fill::Ids {
        below: 5,
        ignored: false,
    };
    check_gradients(Embedding, &[arg(&[2, 3], ids), float(&[5, 4])], 1);
}

#[test]
fn rms_norm_full_row() {
    check_gradients(RmsNorm { eps: 1e-5 }, &[float(&[2, 3, 8]), float(&[8])], 8);
}

#[test]
fn rms_norm_grouped_weight() {
    // QK-norm: the weight spans one head (4) of a row of two heads (8).
    check_gradients(RmsNorm { eps: 1e-5 }, &[float(&[2, 3, 8]), float(&[4])], 8);
}

#[test]
fn linear() {
    check_gradients(Linear, &[float(&[2, 3, 5]), float(&[4, 5])], 6);
}

#[test]
fn bias_add() {
    check_gradients(BiasAdd, &[float(&[2, 3, 5]), float(&[5])], 6);
}

#[test]
fn rope() {
    let op = Rope {
        head_dim: 4,
        theta: 100.0,
    };
    check_gradients(op, &[float(&[2, 4, 8])], 2);
}

#[test]
fn split_rope() {
    // q two heads of 4, k one, v four columns; without and with the packed bias (FP32, so
    // its rounding before the rotation changes nothing).
    for bias in [None, Some(DType::F32)] {
        let op = SplitRope {
            cols: [8, 4, 4],
            head_dim: 4,
            theta: 100.0,
            bias,
        };
        let mut args = vec![float(&[2, 3, 16])];
        args.extend(bias.map(|_| float(&[16])));
        check_gradients(op, &args, 2);
    }
}

fn attention_args(heads: u64, kv_heads: u64, head_dim: u64) -> Vec<Arg> {
    let (b, t) = (2, 3);
    vec![
        float(&[b, t, heads * head_dim]),
        float(&[b, t, kv_heads * head_dim]),
        float(&[b, t, kv_heads * head_dim]),
    ]
}

#[test]
fn attention_grouped_query() {
    let op = Attention {
        heads: 4,
        kv_heads: 2,
        head_dim: 4,
    };
    check_gradients(op, &attention_args(4, 2, 4), 16);
}

#[test]
fn attention_multi_head() {
    let op = Attention {
        heads: 2,
        kv_heads: 2,
        head_dim: 4,
    };
    check_gradients(op, &attention_args(2, 2, 4), 16);
}

#[test]
fn swiglu() {
    let op = SwiGlu { packed: false };
    check_gradients(op, &[float(&[3, 6]), float(&[3, 6])], 1);
}

/// Gate and up as the two halves of each row of one input; its backward writes both into one
/// gradient.
#[test]
fn swiglu_packed() {
    check_gradients(SwiGlu { packed: true }, &[float(&[3, 12])], 1);
}

/// Split's backward is the concatenation of the parts' gradients.
#[test]
fn split() {
    let op = Split {
        cols: vec![4, 2, 3],
    };
    check_gradients(op, &[float(&[2, 3, 9])], 1);
}

#[test]
fn add() {
    check_gradients(Add, &[float(&[3, 4]), float(&[3, 4])], 1);
}

#[test]
fn cross_entropy() {
    // Targets include ignored ones (−1); the mean runs over the others only.
    let targets = Fill::Ids {
        below: 7,
        ignored: true,
    };
    check_gradients(
        CrossEntropy,
        &[float(&[2, 3, 7]), arg(&[2, 3], targets)],
        7 + 6,
    );
}

#[test]
fn classifier_cross_entropy() {
    // Seven tokens in chunks of three (the last chunk partial), some targets ignored.
    let targets = Fill::Ids {
        below: 6,
        ignored: true,
    };
    let op = ClassifierCrossEntropy {
        chunk_rows: 3,
        logits: DType::F32,
    };
    check_gradients(
        op,
        &[float(&[7, 5]), float(&[6, 5]), arg(&[7], targets)],
        5 + 6 + 7,
    );
}

/// The harness itself must catch a wrong rule: RoPE's forward rotation used as its gradient
/// (the sign of the angle flipped), and SwiGLU's gradients for gate and up swapped.
#[test]
fn harness_rejects_wrong_rules() {
    let rope = Rope {
        head_dim: 4,
        theta: 100.0,
    };
    let wrong = vec![BackwardStep::new(
        rope.clone(),
        &[Ref::GradOutput(0)],
        &[Ref::GradInput(0)],
    )];
    let result = check_rule(&rope.into(), &wrong, &[float(&[1, 4, 8])], 2, next_seed());
    assert!(result.is_err(), "a sign-flipped RoPE gradient passed");

    use Ref::*;
    let swapped = vec![BackwardStep::new(
        SwiGluBackward { packed: false },
        &[Input(0), Input(1), GradOutput(0)],
        &[GradInput(1), GradInput(0)],
    )];
    let args = [float(&[2, 5]), float(&[2, 5])];
    let swiglu = SwiGlu { packed: false }.into();
    let result = check_rule(&swiglu, &swapped, &args, 1, next_seed());
    assert!(result.is_err(), "swapped SwiGLU gradients passed");
}

/// True for the ops autodiff differentiates. The match has no wildcard, so a new op cannot be
/// added without deciding here whether it needs a gradient check.
fn is_differentiated(op: &Op) -> bool {
    match op {
        Op::Embedding(_)
        | Op::RmsNorm(_)
        | Op::Linear(_)
        | Op::BiasAdd(_)
        | Op::Rope(_)
        | Op::Attention(_)
        | Op::SwiGlu(_)
        | Op::Split(_)
        | Op::SplitRope(_)
        | Op::Add(_)
        | Op::CrossEntropy(_)
        | Op::ClassifierCrossEntropy(_) => true,
        Op::EmbeddingBackward(_)
        | Op::RmsNormBackward(_)
        | Op::RmsNormBackwardAdd(_)
        | Op::RmsNormBackwardAddAbsMax(_)
        | Op::LinearBackwardData(_)
        | Op::LinearBackwardWeight(_)
        | Op::BiasBackward(_)
        | Op::RopeBackward(_)
        | Op::AttentionBackward(_)
        | Op::SwiGluBackward(_)
        | Op::Concat(_)
        | Op::SplitRopeBackward(_)
        | Op::SplitRopeBackwardAbsMax(_)
        | Op::CrossEntropyBackward(_)
        | Op::ClassifierCrossEntropyBackward(_)
        | Op::AddRmsNorm(_)
        | Op::RmsNormAbsMax(_)
        | Op::AddRmsNormAbsMax(_)
        | Op::SwiGluAbsMax(_)
        | Op::SwiGluBackwardAbsMax(_)
        | Op::SumSquares(_)
        | Op::ClipScale(_)
        | Op::AdamW(_)
        | Op::Cast(_)
        | Op::AbsMax(_)
        | Op::Quantize(_)
        | Op::QuantizeDual(_)
        | Op::Fp8Matmul(_)
        | Op::CastStochastic(_)
        | Op::Zero(_)
        | Op::Copy(_)
        | Op::TransposeFp8(_) => false,
    }
}

/// Walks a backward rule with types only: the type of every `GradInput` it defines.
fn rule_types(op: &Op, inputs: &[TensorType]) -> Result<Vec<Option<TensorType>>, String> {
    let outputs = op.infer(inputs).map_err(|e| e.to_string())?;
    let rule = op.spec().backward(inputs).ok_or("no backward rule")?;
    let mut defined: Vec<(Ref, TensorType)> = Vec::new();
    let lookup = |defined: &[(Ref, TensorType)], r: Ref| -> Result<TensorType, String> {
        match r {
            Ref::Input(i) => inputs.get(i as usize).cloned(),
            Ref::Output(i) | Ref::GradOutput(i) => outputs.get(i as usize).cloned(),
            _ => defined
                .iter()
                .find(|(d, _)| *d == r)
                .map(|(_, t)| t.clone()),
        }
        .ok_or(format!("{r:?} is read before it is defined"))
    };
    for step in &rule {
        match step {
            BackwardStep::Apply {
                op: step_op,
                inputs: refs,
                outputs: outs,
            } => {
                let types = refs
                    .iter()
                    .map(|&r| lookup(&defined, r))
                    .collect::<Result<Vec<_>, _>>()?;
                let made = step_op.infer(&types).map_err(|e| e.to_string())?;
                defined.extend(outs.iter().copied().zip(made));
            }
            BackwardStep::PassThrough { output, input } => {
                let t = lookup(&defined, Ref::GradOutput(*output))?;
                defined.push((Ref::GradInput(*input), t));
            }
        }
    }
    Ok((0..inputs.len())
        .map(|i| lookup(&defined, Ref::GradInput(i as u8)).ok())
        .collect())
}

/// Every op's backward rule, typed by the step ops' own `infer`, gives each float input a
/// gradient of exactly the input's type (shape and dtype) and each integer input none, at
/// model-sized BF16 shapes; the ops that are not differentiated have no rule.
#[test]
fn backward_types_match_inputs() {
    let bf = |s: &[u64]| TensorType::new(s, DType::BF16);
    let ids = |s: &[u64]| TensorType::new(s, DType::I32);
    let (b, t, c, v) = (4, 1024, 2048, 151_936);
    let cases: Vec<(Op, Vec<TensorType>)> = vec![
        (Embedding.into(), vec![ids(&[b, t]), bf(&[v, c])]),
        (RmsNorm { eps: 1e-6 }.into(), vec![bf(&[b, t, c]), bf(&[c])]),
        (
            RmsNorm { eps: 1e-6 }.into(),
            vec![bf(&[b, t, 16 * 128]), bf(&[128])],
        ),
        (Linear.into(), vec![bf(&[b, t, c]), bf(&[11008, c])]),
        (BiasAdd.into(), vec![bf(&[b, t, c]), bf(&[c])]),
        (
            Rope {
                head_dim: 128,
                theta: 1e6,
            }
            .into(),
            vec![bf(&[b, t, c])],
        ),
        (
            Attention {
                heads: 16,
                kv_heads: 2,
                head_dim: 128,
            }
            .into(),
            vec![bf(&[b, t, c]), bf(&[b, t, 256]), bf(&[b, t, 256])],
        ),
        (
            SwiGlu { packed: false }.into(),
            vec![bf(&[b, t, c]), bf(&[b, t, c])],
        ),
        (SwiGlu { packed: true }.into(), vec![bf(&[b, t, 2 * c])]),
        (
            Split {
                cols: vec![c, 256, 256],
            }
            .into(),
            vec![bf(&[b, t, c + 512])],
        ),
        (
            SplitRope {
                cols: [c, 256, 256],
                head_dim: 128,
                theta: 1e6,
                bias: Some(DType::BF16),
            }
            .into(),
            vec![bf(&[b, t, c + 512]), bf(&[c + 512])],
        ),
        (Add.into(), vec![bf(&[b, t, c]), bf(&[b, t, c])]),
        (CrossEntropy.into(), vec![bf(&[b, t, v]), ids(&[b, t])]),
        (
            ClassifierCrossEntropy {
                chunk_rows: 1024,
                logits: DType::BF16,
            }
            .into(),
            vec![bf(&[b, t, c]), bf(&[v, c]), ids(&[b, t])],
        ),
    ];
    for (op, inputs) in &cases {
        assert!(
            is_differentiated(op),
            "{op} is checked but listed as not differentiated"
        );
        let grads = rule_types(op, inputs).unwrap_or_else(|e| panic!("{op}: {e}"));
        for ((input, grad), name) in inputs.iter().zip(grads).zip(op.spec().input_names()) {
            match (input.dtype.is_float(), grad) {
                (true, Some(g)) => assert_eq!(&g, input, "{op}: gradient of `{name}`"),
                (true, None) => panic!("{op}: `{name}` gets no gradient"),
                (false, Some(g)) => panic!("{op}: integer `{name}` gets gradient {g}"),
                (false, None) => {}
            }
        }
    }
    // Each differentiated variant appears above; the backward and optimizer ops have no rule.
    let differentiated: Vec<&str> = cases.iter().map(|(op, _)| op.name()).collect();
    let others: Vec<(Op, Vec<TensorType>)> = vec![
        (
            EmbeddingBackward { vocab: v }.into(),
            vec![ids(&[b, t]), bf(&[b, t, c])],
        ),
        (RmsNormBackward.into(), vec![bf(&[b, t, c]); 4]),
        (
            RmsNormBackwardAdd { dtype: DType::BF16 }.into(),
            vec![bf(&[b, t, c]); 5],
        ),
        (LinearBackwardData.into(), vec![bf(&[b, t, c]); 2]),
        (LinearBackwardWeight.into(), vec![bf(&[b, t, c]); 2]),
        (BiasBackward.into(), vec![bf(&[b, t, c])]),
        (
            RopeBackward {
                head_dim: 128,
                theta: 1e6,
            }
            .into(),
            vec![bf(&[b, t, c])],
        ),
        (
            AttentionBackward {
                heads: 16,
                kv_heads: 2,
                head_dim: 128,
            }
            .into(),
            vec![bf(&[b, t, c]); 6],
        ),
        (
            SwiGluBackward { packed: false }.into(),
            vec![bf(&[b, t, c]); 3],
        ),
        (
            SwiGluBackward { packed: true }.into(),
            vec![bf(&[b, t, 2 * c]), bf(&[b, t, c])],
        ),
        (
            Concat {
                cols: vec![c, 256, 256],
            }
            .into(),
            vec![bf(&[b, t, c]), bf(&[b, t, 256]), bf(&[b, t, 256])],
        ),
        (
            SplitRopeBackward {
                cols: [c, 256, 256],
                head_dim: 128,
                theta: 1e6,
            }
            .into(),
            vec![bf(&[b, t, c]), bf(&[b, t, 256]), bf(&[b, t, 256])],
        ),
        (
            SplitRopeBackwardAbsMax {
                cols: [c, 256, 256],
                head_dim: 128,
                theta: 1e6,
                dtype: DType::BF16,
            }
            .into(),
            vec![bf(&[b, t, c]), bf(&[b, t, 256]), bf(&[b, t, 256])],
        ),
        (CrossEntropyBackward.into(), vec![bf(&[b, t, v]); 3]),
        (
            ClassifierCrossEntropyBackward {
                chunk_rows: 1024,
                logits: DType::BF16,
            }
            .into(),
            vec![
                bf(&[b, t, c]),
                bf(&[v, c]),
                ids(&[b, t]),
                TensorType::new([1], DType::F32),
            ],
        ),
        (
            AddRmsNorm {
                eps: 1e-6,
                dtype: DType::BF16,
            }
            .into(),
            vec![bf(&[b, t, c]), bf(&[b, t, c]), bf(&[c])],
        ),
        (SumSquares.into(), vec![bf(&[c])]),
        (
            ClipScale { max_norm: 1.0 }.into(),
            vec![TensorType::new([1], DType::F32)],
        ),
        (
            AdamW::nearest(0.9, 0.95, 1e-8, 0.1).into(),
            vec![bf(&[c]); 6],
        ),
        (Cast { to: DType::F8E4M3 }.into(), vec![bf(&[c])]),
        (AbsMax.into(), vec![bf(&[c])]),
        (Quantize { to: DType::F8E4M3 }.into(), vec![bf(&[c]); 2]),
        (Zero.into(), vec![bf(&[c])]),
    ];
    for (op, inputs) in &others {
        assert!(
            !is_differentiated(op),
            "{op} is differentiated but has no gradient test"
        );
        assert!(
            op.spec().backward(inputs).is_none(),
            "{op} has an unexpected backward rule"
        );
    }
    for name in [
        "embedding",
        "rms_norm",
        "linear",
        "bias_add",
        "rope",
        "attention",
        "swiglu",
        "split_rope",
        "add",
        "cross_entropy",
        "classifier_cross_entropy",
    ] {
        assert!(
            differentiated.contains(&name),
            "{name} is missing from the type check"
        );
    }
}
