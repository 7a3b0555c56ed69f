//! The CPU references of the ops that are not differentiated, against independent naive
//! computations: sum_squares, clip_scale, adamw (PyTorch's AdamW re-done in f64), abs_max,
//! quantize, cast and zero; the fused ops (chunked LM head + loss, residual add + RMSNorm, the
//! RMSNorm backward with its residual add, the abs-max variants of swiglu, its backward and the
//! norms) against the unfused ones; and those
//! of LLMQ's FP8 recipe: quantize_dual, fp8_matmul (against the BF16 path's matmuls),
//! cast_stochastic and adamw's stochastic moments.

use llmq_kernels::numerics::{decode_fp8, encode_fp8, round_to};
use llmq_kernels::ops::*;
use llmq_kernels::{DType, Op, TensorType, View, ViewMut, rng};

/// Unit roundoff of FP32.
const U: f64 = f32::EPSILON as f64 / 2.0;

fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {s}");
    s
}

fn normals(seed: u64, stream: u64, n: usize, scale: f64) -> Vec<f32> {
    (0..n as u64)
        .map(|i| (rng::normal(seed, stream, i) * scale) as f32)
        .collect()
}

/// Runs an op's CPU reference on FP32 data; outputs start as NaN so an unwritten one shows.
fn run(op: impl Into<Op>, inputs: &[(TensorType, Vec<f32>)]) -> Vec<Vec<f32>> {
    let op = op.into();
    let types: Vec<TensorType> = inputs.iter().map(|(t, _)| t.clone()).collect();
    let out_types = op.infer(&types).unwrap_or_else(|e| panic!("{op}: {e}"));
    let mut outs: Vec<Vec<f32>> = out_types
        .iter()
        .map(|t| vec![f32::NAN; t.numel() as usize])
        .collect();
    let views: Vec<View> = inputs
        .iter()
        .map(|(t, d)| View {
            shape: &t.shape,
            data: d,
        })
        .collect();
    let mut muts: Vec<ViewMut> = out_types
        .iter()
        .zip(outs.iter_mut())
        .map(|(t, d)| ViewMut {
            shape: &t.shape,
            data: d,
        })
        .collect();
    op.spec()
        .cpu(&views, &mut muts)
        .unwrap_or_else(|e| panic!("{op}: {e}"));
    outs
}

fn f32s(data: Vec<f32>) -> (TensorType, Vec<f32>) {
    (TensorType::new([data.len() as u64], DType::F32), data)
}

fn assert_close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got:e}, want {want:e}, error {:e} > tolerance {tol:e}",
        (got - want).abs()
    );
}

#[test]
fn sum_squares() {
    let s = seed();
    for n in [1, 7, 1000] {
        let x = normals(s, n as u64, n, 3.0);
        let got = run(SumSquares, &[f32s(x.clone())])[0][0] as f64;
        // A plain FP32 loop: its error is at most n·u of the sum (all terms are positive), and
        // the reference's result is off by at most half an ulp, u.
        let naive = x.iter().fold(0f32, |acc, v| acc + v * v) as f64;
        assert_close("sum_squares", got, naive, (n as f64 + 2.0) * U * naive);
    }
    assert_eq!(run(SumSquares, &[f32s(vec![0.0; 5])])[0][0], 0.0);
}

#[test]
fn clip_scale() {
    let s = seed();
    for i in 0..50 {
        let sum_sq = (rng::uniform(s, 0, i) * 100.0) as f32;
        let norm = (sum_sq as f64).sqrt();
        // Clipping on (a limit below the norm and above), and off (max_norm of zero or less).
        for max_norm in [norm * 0.3, norm * 3.0, 0.0, -1.0] {
            let max_norm = max_norm as f32;
            let out = run(ClipScale { max_norm }, &[f32s(vec![sum_sq])]);
            let (got_norm, got_scale) = (out[0][0] as f64, out[1][0] as f64);
            assert_close("norm", got_norm, norm, 2.0 * U * norm);
            if max_norm > 0.0 {
                // PyTorch's clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
                let want = (max_norm as f64 / (norm + 1e-6)).min(1.0);
                assert_close("scale", got_scale, want, 4.0 * U);
                if (max_norm as f64) < norm {
                    // The clipped norm is the limit (up to the 1e-6 guard).
                    let clipped = got_scale * norm;
                    assert_close(
                        "clipped norm",
                        clipped,
                        max_norm as f64,
                        1e-6 + 8.0 * U * norm,
                    );
                }
            } else {
                assert_eq!(got_scale, 1.0, "max_norm {max_norm} must disable clipping");
            }
        }
    }
    // A zero gradient: norm 0, scale 1 (no division by zero).
    let out = run(ClipScale { max_norm: 1.0 }, &[f32s(vec![0.0])]);
    assert_eq!((out[0][0], out[1][0]), (0.0, 1.0));
}

/// PyTorch's `torch.optim.AdamW` step (single-tensor, no amsgrad), in f64, with the gradient
/// first multiplied by the clipping factor.
#[allow(clippy::too_many_arguments)]
fn torch_adamw_step(
    p: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    grad: &[f64],
    clip: f64,
    lr: f64,
    step: i32,
    (beta1, beta2, eps, weight_decay): (f64, f64, f64, f64),
) {
    for i in 0..p.len() {
        let g = grad[i] * clip;
        p[i] *= 1.0 - lr * weight_decay;
        m[i] += (g - m[i]) * (1.0 - beta1); // exp_avg.lerp_(grad, 1 - beta1)
        v[i] = v[i] * beta2 + (1.0 - beta2) * g * g;
        let step_size = lr / (1.0 - beta1.powi(step));
        let denom = v[i].sqrt() / (1.0 - beta2.powi(step)).sqrt() + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

#[test]
fn adamw_matches_pytorch() {
    let s = seed();
    let n = 64;
    for weight_decay in [0.1f32, 0.0] {
        let op = AdamW::nearest(0.9, 0.95, 1e-4, weight_decay);
        let hyper = (
            op.beta1 as f64,
            op.beta2 as f64,
            op.eps as f64,
            weight_decay as f64,
        );
        let clip = 0.7f32;
        let mut p = normals(s, 0, n, 1.0);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
        let mut max_g = 0f64;
        let mut update_sum = 0f64;
        for (step, lr) in [(1, 1e-2f32), (2, 5e-3), (3, 2e-3)] {
            // Gradients over three decades, so that eps matters for the small ones.
            let grad: Vec<f32> = (0..n as u64)
                .map(|i| {
                    let mag = 10f64.powf(-3.0 * rng::uniform(s, 10 + step as u64, i));
                    (rng::normal(s, 20 + step as u64, i) * mag) as f32
                })
                .collect();
            let out = run(
                op.clone(),
                &[
                    f32s(p.clone()),
                    f32s(grad.clone()),
                    f32s(m.clone()),
                    f32s(v.clone()),
                    f32s(vec![clip]),
                    f32s(vec![lr, step as f32]),
                ],
            );
            let g64: Vec<f64> = grad.iter().map(|&g| g as f64).collect();
            torch_adamw_step(
                &mut p64,
                &mut m64,
                &mut v64,
                &g64,
                clip as f64,
                lr as f64,
                step,
                hyper,
            );
            max_g = g64.iter().fold(max_g, |a, g| a.max(g.abs() * clip as f64));
            // An Adam step moves p by at most about lr (Kingma & Ba §2.1, since
            // 1 − β1 < √(1 − β2) here); 10·lr bounds it with room to spare.
            update_sum += 10.0 * lr as f64;
            [p, m, v] = [out[0].clone(), out[1].clone(), out[2].clone()];
            // Each value is a dozen FP32 operations deep per step, each off by at most u
            // relative to the magnitudes involved: 64·u over three steps covers it. p's
            // magnitudes are p itself and the updates; m's and v's are bounded by max |g|, g².
            for i in 0..n {
                let what = format!("step {step}, weight_decay {weight_decay}, element {i}");
                let tol_p = 64.0 * U * (p64[i].abs() + update_sum);
                assert_close(&format!("param, {what}"), p[i] as f64, p64[i], tol_p);
                assert_close(&format!("m, {what}"), m[i] as f64, m64[i], 64.0 * U * max_g);
                let tol_v = 64.0 * U * max_g * max_g;
                assert_close(&format!("v, {what}"), v[i] as f64, v64[i], tol_v);
            }
        }
    }
}

#[test]
fn abs_max() {
    let s = seed();
    let x = normals(s, 0, 257, 5.0);
    let want = x.iter().map(|v| (*v as f64).abs()).fold(0.0, f64::max);
    assert_eq!(run(AbsMax, &[f32s(x.clone())])[0][0] as f64, want);
    // A negative extreme counts by magnitude.
    let mut y = x.clone();
    y[100] = -(want as f32) * 2.0;
    assert_eq!(run(AbsMax, &[f32s(y)])[0][0] as f64, want * 2.0);
    // A NaN anywhere, first, inside or last, makes the result NaN.
    for at in [0, 128, 256] {
        let mut y = x.clone();
        y[at] = f32::NAN;
        assert!(run(AbsMax, &[f32s(y)])[0][0].is_nan(), "NaN at {at} hidden");
    }
    let mut y = x.clone();
    y[7] = f32::NEG_INFINITY;
    assert_eq!(run(AbsMax, &[f32s(y)])[0][0], f32::INFINITY);
    assert_eq!(run(AbsMax, &[f32s(vec![0.0, -0.0, 0.0])])[0][0], 0.0);
}

#[test]
fn quantize() {
    let s = seed();
    for (to, fmax) in [(DType::F8E4M3, 448.0f64), (DType::F8E5M2, 57344.0)] {
        let x = normals(s, 0, 300, 0.02);
        let amax = x.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let out = run(Quantize { to }, &[f32s(x.clone()), f32s(vec![amax])]);
        let (q, descale) = (&out[0], out[1][0] as f64);
        // scale = fmax / amax: one rounding for the scale, one for the product.
        let scale = fmax / amax as f64;
        let mut largest = 0f64;
        for (i, (&qi, &xi)) in q.iter().zip(&x).enumerate() {
            let want = xi as f64 * scale;
            assert_close(
                &format!("{to} q[{i}]"),
                qi as f64,
                want,
                2.0 * U * want.abs(),
            );
            largest = largest.max((qi as f64).abs());
            // Stored as FP8, the largest lands on (or, through the scale's rounding, right
            // below) the largest finite value, never beyond it and never NaN.
            let stored = decode_fp8(to, encode_fp8(to, qi)) as f64;
            assert!(
                stored.abs() <= fmax,
                "{to}: q[{i}] = {qi} stores as {stored}"
            );
        }
        assert_close(&format!("{to} max |q|"), largest, fmax, 2.0 * U * fmax);
        // descale undoes the scale: amax / fmax.
        let want = amax as f64 / fmax;
        assert_close(&format!("{to} descale"), descale, want, 3.0 * U * want);

        // amax = 0 (an all-zero tensor): scale 1, values unchanged, descale 1.
        let zeros = vec![0f32; 16];
        let out = run(Quantize { to }, &[f32s(zeros.clone()), f32s(vec![0.0])]);
        assert_eq!((out[0].clone(), out[1][0]), (zeros, 1.0));
        let out = run(Quantize { to }, &[f32s(x.clone()), f32s(vec![0.0])]);
        assert_eq!((out[0].clone(), out[1][0]), (x.clone(), 1.0));
    }
}

#[test]
fn cast() {
    let s = seed();
    let mut x = normals(s, 0, 64, 100.0);
    x.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        1e-40,
        3e38,
    ]);
    for to in [DType::F32, DType::BF16, DType::F8E4M3, DType::F8E5M2] {
        let ty = TensorType::new([x.len() as u64], DType::F32);
        let out_ty = Op::from(Cast { to })
            .infer(std::slice::from_ref(&ty))
            .unwrap();
        assert_eq!(out_ty, vec![ty.with_dtype(to)]);
        // The value passes unchanged; rounding to `to` happens when the backend stores it.
        let y = &run(Cast { to }, &[(ty, x.clone())])[0];
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(y), bits(&x), "cast to {to} changed a value");
    }
}

#[test]
fn zero() {
    let s = seed();
    let x = normals(s, 0, 33, 1.0);
    let ty = TensorType::new([3, 11], DType::BF16);
    let out_ty = Op::from(Zero).infer(std::slice::from_ref(&ty)).unwrap();
    assert_eq!(out_ty, vec![ty.clone()]);
    let y = &run(Zero, &[(ty, x)])[0];
    assert!(y.iter().all(|v| v.to_bits() == 0), "zero left {y:?}");
}

/// Quantises `x` (`[rows, cols]`) with its own abs-max as the plan does, `q` stored in `to`:
/// returns the stored values and the descale.
fn quantized(x: &[f32], cols: u64, to: DType) -> (TensorType, Vec<f32>, f32) {
    let amax = x.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let ty = TensorType::new([x.len() as u64 / cols, cols], DType::BF16);
    let out = run(
        Quantize { to },
        &[(ty.clone(), x.to_vec()), f32s(vec![amax])],
    );
    let q = out[0].iter().map(|&v| round_to(to, v)).collect();
    (ty.with_dtype(to), q, out[1][0])
}

/// `[rows, cols]` row-major values transposed, element by element.
fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|k| v[(k % rows) * cols + k / rows])
        .collect()
}

#[test]
fn quantize_dual_writes_both_layouts_of_quantize() {
    let s = seed();
    let (rows, cols) = (7, 5);
    let x = normals(s, 0, rows * cols, 0.3);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for to in [DType::F8E4M3, DType::F8E5M2] {
        let (_, q, d) = quantized(&x, cols as u64, to);
        let qt = transposed(&q, rows, cols);
        let amax = x.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let ty = TensorType::new([rows as u64, cols as u64], DType::BF16);
        let out = run(QuantizeDual { to }, &[(ty, x.clone()), f32s(vec![amax])]);
        let stored = |v: &[f32]| v.iter().map(|&v| round_to(to, v)).collect::<Vec<_>>();
        assert_eq!(
            bits(&stored(&out[0])),
            bits(&q),
            "{to}: q is not quantize's"
        );
        assert_eq!(
            bits(&stored(&out[1])),
            bits(&qt),
            "{to}: qT is not quantize's q transposed"
        );
        assert_eq!(out[2][0].to_bits(), d.to_bits(), "{to}: descales differ");
    }
    let ty = TensorType::new([2, 3, 5], DType::BF16);
    let out = Op::from(QuantizeDual { to: DType::F8E4M3 })
        .infer(&[ty, TensorType::new([1], DType::F32)])
        .unwrap();
    assert_eq!(out[0], TensorType::new([2, 3, 5], DType::F8E4M3));
    assert_eq!(out[1], TensorType::new([5, 6], DType::F8E4M3));
}

#[test]
fn transposing_the_fp8_copy_is_the_transpose() {
    // What the FP8 recipe relies on to derive one layout from the other.
    let s = seed();
    let (rows, cols) = (7, 5);
    let x = normals(s, 0, rows * cols, 0.3);
    for to in [DType::F8E4M3, DType::F8E5M2] {
        let (q_ty, q, _) = quantized(&x, cols as u64, to);
        let qt = transposed(&q, rows, cols);
        let t = &run(TransposeFp8, &[(q_ty.clone(), q.clone())])[0];
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(t),
            bits(&qt),
            "{to}: transpose_fp8(quantize) is not quantize's q transposed"
        );
        let back = &run(
            TransposeFp8,
            &[(TensorType::new([cols as u64, rows as u64], to), t.clone())],
        )[0];
        assert_eq!(
            bits(back),
            bits(&q),
            "{to}: transposing twice is not the identity"
        );
    }
    let bf16 = TensorType::new([2, 3], DType::BF16);
    assert!(
        Op::from(TransposeFp8).infer(&[bf16]).is_err(),
        "BF16 is refused"
    );
}

/// The largest error of one quantised element: half a quantum of the format at its magnitude,
/// in unscaled units (relative 2^-(man_bits+1) for normals, half the smallest quantum below).
fn fp8_error_bound(to: DType, v: f64, descale: f64) -> f64 {
    let (man_bits, min_normal_exp) = match to {
        DType::F8E4M3 => (3, -6),
        _ => (2, -14),
    };
    let scaled = v.abs() / descale;
    let binade = scaled.log2().floor().max(min_normal_exp as f64);
    2f64.powf(binade - man_bits as f64 - 1.0) * descale
}

#[test]
fn fp8_matmul_matches_the_bf16_matmuls_on_its_operands() {
    // The three layouts the precision pass builds: y = x·Wᵀ, dx = dy·W (b = Wᵀ quantised
    // transposed), dW = dyᵀ·x (both quantised transposed).
    let s = seed();
    let (rows, k, n) = (12usize, 16usize, 8usize);
    let x = normals(s, 0, rows * k, 1.0);
    let w = normals(s, 1, n * k, 0.05);
    let dy = normals(s, 2, rows * n, 1e-3);
    let bf = |shape: &[usize], d: &[f32]| {
        let shape: Vec<u64> = shape.iter().map(|&v| v as u64).collect();
        (TensorType::new(shape, DType::F32), d.to_vec())
    };
    let g = DType::F8E5M2;
    let e4 = DType::F8E4M3;
    type Case<'a> = (
        &'a str,
        (&'a [f32], usize, DType, bool),
        (&'a [f32], usize, DType, bool),
        Op,
    );
    let cases: [Case; 3] = [
        (
            "y = x·Wᵀ",
            (&x, k, e4, false),
            (&w, k, e4, false),
            Linear.into(),
        ),
        (
            "dx = dy·W",
            (&dy, n, g, false),
            (&w, k, e4, true),
            LinearBackwardData.into(),
        ),
        (
            "dW = dyᵀ·x",
            (&dy, n, g, true),
            (&x, k, e4, true),
            LinearBackwardWeight.into(),
        ),
    ];
    for (what, (a, a_cols, a_to, a_t), (b, b_cols, b_to, b_t), bf16_op) in cases {
        // An operand quantised, in the layout its matmul reads (transposed: [cols, rows]).
        let operand = |x: &[f32], cols: usize, to: DType, t: bool| {
            let (ty, q, d) = quantized(x, cols as u64, to);
            if !t {
                return (ty, q, d);
            }
            let rows = x.len() / cols;
            let ty = TensorType::new([cols as u64, rows as u64], to);
            (ty, transposed(&q, rows, cols), d)
        };
        let (aq_ty, aq, ad) = operand(a, a_cols, a_to, a_t);
        let (bq_ty, bq, bd) = operand(b, b_cols, b_to, b_t);
        let got = &run(
            Fp8Matmul { out: DType::F32 },
            &[
                (aq_ty, aq.clone()),
                f32s(vec![ad]),
                (bq_ty, bq.clone()),
                f32s(vec![bd]),
            ],
        )[0];
        // The BF16 path's op on the dequantised operands, in their original layouts.
        let deq = |q: &[f32], d: f32, t: bool, cols: usize| -> Vec<f32> {
            let v: Vec<f32> = q.iter().map(|&e| e * d).collect();
            if t {
                transposed(&v, cols, q.len() / cols)
            } else {
                v
            }
        };
        let (a_deq, b_deq) = (deq(&aq, ad, a_t, a_cols), deq(&bq, bd, b_t, b_cols));
        let (a_shape, b_shape) = ([a.len() / a_cols, a_cols], [b.len() / b_cols, b_cols]);
        let want = &run(bf16_op, &[bf(&a_shape, &a_deq), bf(&b_shape, &b_deq)])[0];
        // The unquantised product, in f64, from the same layouts.
        let exact = &run_f64_matmul(what, a, a_cols, b, b_cols);
        let contraction = if a_t { a.len() / a_cols } else { a_cols } as f64;
        assert_eq!(got.len(), want.len(), "{what}");
        for i in 0..got.len() {
            // Same products in FP32 both ways; they differ by the order of the descale
            // multiplication and the accumulation: γ_K·Σ|a||b| plus 2u.
            let (e, bound) = exact[i];
            assert_close(
                &format!("{what} [{i}] against the BF16 op"),
                got[i] as f64,
                want[i] as f64,
                (contraction + 2.0) * 2.0 * U * bound + 1e-30,
            );
            // Against the unquantised product: each operand element is off by at most half
            // a quantum; the sum of |errors × the other operand| bounds the result's error.
            let tol = fp8_product_bound(what, a, a_cols, b, b_cols, i, (a_to, ad), (b_to, bd));
            assert_close(
                &format!("{what} [{i}] against exact"),
                got[i] as f64,
                e,
                tol,
            );
        }
    }
}

/// For each output of one of the three matmuls: the exact f64 value and Σ|a||b|.
fn run_f64_matmul(
    what: &str,
    a: &[f32],
    a_cols: usize,
    b: &[f32],
    b_cols: usize,
) -> Vec<(f64, f64)> {
    let terms = matmul_terms(what, a, a_cols, b, b_cols);
    terms
        .iter()
        .map(|t| {
            let sum = t.iter().map(|&(x, y)| x * y).sum();
            let abs = t.iter().map(|&(x, y)| (x * y).abs()).sum();
            (sum, abs)
        })
        .collect()
}

/// Per output element, the operand pairs whose products it sums, in the original layouts.
fn matmul_terms(
    what: &str,
    a: &[f32],
    a_cols: usize,
    b: &[f32],
    b_cols: usize,
) -> Vec<Vec<(f64, f64)>> {
    let (a_rows, b_rows) = (a.len() / a_cols, b.len() / b_cols);
    let at = |r: usize, c: usize| a[r * a_cols + c] as f64;
    let bt = |r: usize, c: usize| b[r * b_cols + c] as f64;
    let mut out = Vec::new();
    match what {
        // y[r][m] = Σ_k x[r][k] w[m][k]
        "y = x·Wᵀ" => (0..a_rows).for_each(|r| {
            (0..b_rows).for_each(|m| out.push((0..a_cols).map(|k| (at(r, k), bt(m, k))).collect()))
        }),
        // dx[r][k] = Σ_m dy[r][m] w[m][k]
        "dx = dy·W" => (0..a_rows).for_each(|r| {
            (0..b_cols).for_each(|k| out.push((0..a_cols).map(|m| (at(r, m), bt(m, k))).collect()))
        }),
        // dw[m][k] = Σ_r dy[r][m] x[r][k]
        _ => (0..a_cols).for_each(|m| {
            (0..b_cols).for_each(|k| out.push((0..a_rows).map(|r| (at(r, m), bt(r, k))).collect()))
        }),
    }
    out
}

/// The FP8 error bound of output `i`: Σ (e_a|b| + |a|e_b + e_a e_b) over its terms, plus the
/// FP32 accumulation's γ_K·Σ|a||b|.
#[allow(clippy::too_many_arguments)]
fn fp8_product_bound(
    what: &str,
    a: &[f32],
    a_cols: usize,
    b: &[f32],
    b_cols: usize,
    i: usize,
    (a_to, ad): (DType, f32),
    (b_to, bd): (DType, f32),
) -> f64 {
    let terms = &matmul_terms(what, a, a_cols, b, b_cols)[i];
    let k = terms.len() as f64;
    terms
        .iter()
        .map(|&(x, y)| {
            let (ex, ey) = (
                fp8_error_bound(a_to, x, ad as f64),
                fp8_error_bound(b_to, y, bd as f64),
            );
            ex * y.abs() + x.abs() * ey + ex * ey + (k + 2.0) * 2.0 * U * (x * y).abs()
        })
        .sum::<f64>()
        + 1e-30
}

#[test]
fn stochastic_rounding_is_unbiased_and_reproducible() {
    let hyper = |step: f32| f32s(vec![1e-3, step]);
    let cast = |x: &[f32], step: f32, stream: u64| {
        run(CastStochastic { stream }, &[f32s(x.to_vec()), hyper(step)]).remove(0)
    };
    // A value 0.3 of the way from 1 to the next BF16 value, 1 + 2⁻⁷.
    let spacing = 2f64.powi(-7);
    let n = 20_000;
    let x = vec![(1.0 + 0.3 * spacing) as f32; n];
    let y = cast(&x, 5.0, 11);
    assert!(
        y.iter().all(|&v| v == 1.0 || v as f64 == 1.0 + spacing),
        "not a neighbour"
    );
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    // Rounding up with probability p = 0.3: the mean's standard deviation is
    // spacing·√(p(1-p)/n); five of them bound a correct generator's deviation.
    let sigma = spacing * (0.3f64 * 0.7 / n as f64).sqrt();
    assert_close(
        "mean of stochastic rounding",
        mean,
        x[0] as f64,
        5.0 * sigma,
    );

    // Random values: each result is BF16 and one of the two neighbours of its input.
    let s = seed();
    let x = normals(s, 0, 1000, 3.0);
    let y = cast(&x, 7.0, 3);
    for (&xi, &yi) in x.iter().zip(&y) {
        assert_eq!(round_to(DType::BF16, yi), yi, "{yi} is not a BF16 value");
        let (down, up) = bf16_neighbours(xi);
        assert!(
            yi == down || yi == up,
            "{xi} rounded to {yi}, not {down} or {up}"
        );
    }
    // The same (step, stream) gives the same bits; another step or stream other bits.
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&cast(&x, 7.0, 3)), bits(&y));
    assert_ne!(bits(&cast(&x, 8.0, 3)), bits(&y));
    assert_ne!(bits(&cast(&x, 7.0, 4)), bits(&y));
}

/// The BF16 values at or below and at or above `x` in magnitude.
fn bf16_neighbours(x: f32) -> (f32, f32) {
    let down = f32::from_bits(x.to_bits() & 0xffff_0000);
    let up = if down == x {
        x
    } else {
        f32::from_bits((x.to_bits() & 0xffff_0000) + 0x1_0000)
    };
    (down, up)
}

/// AdamW with PyTorch's usual settings, rounding everything it writes to nearest.
fn nearest_adamw() -> AdamW {
    AdamW::nearest(0.9, 0.95, 1e-8, 0.1)
}

#[test]
fn adamw_stochastic_moments_round_the_nearest_free_update() {
    let s = seed();
    let n = 500;
    let bf = |d: Vec<f32>| (TensorType::new([n as u64], DType::BF16), d);
    let inputs = [
        (
            TensorType::new([n as u64], DType::F32),
            normals(s, 0, n, 1.0),
        ),
        bf(normals(s, 1, n, 0.1)),
        bf(normals(s, 2, n, 0.01)
            .iter()
            .map(|&v| round_to(DType::BF16, v))
            .collect()),
        bf(normals(s, 3, n, 0.001)
            .iter()
            .map(|&v| round_to(DType::BF16, v.abs()))
            .collect()),
        f32s(vec![0.5]),
        f32s(vec![1e-3, 4.0]),
    ];
    let plain = nearest_adamw();
    let sr = AdamW {
        stochastic: Some(StochasticMoments {
            m_stream: 1,
            v_stream: 2,
        }),
        ..plain.clone()
    };
    let want = run(plain, &inputs);
    let got = run(sr.clone(), &inputs);
    assert_eq!(got[0], want[0], "the parameter changed");
    for (which, (g, w)) in ["m", "v"].iter().zip(got[1..].iter().zip(&want[1..])) {
        for (&gi, &wi) in g.iter().zip(w) {
            let (down, up) = bf16_neighbours(wi);
            assert!(gi == down || gi == up, "{which}: {wi} rounded to {gi}");
        }
    }
    assert_eq!(run(sr, &inputs), got, "not reproducible");
}

/// A BF16 parameter with no master copy, updated in place with stochastic rounding, lands on
/// one of the two BF16 neighbours of the update nearest rounding would round, on both sides
/// across the tensor, reproducibly; the moments are untouched by it.
#[test]
fn adamw_stochastic_param_rounds_the_in_place_update() {
    let s = seed();
    let n = 500;
    let bf = |d: Vec<f32>| -> (TensorType, Vec<f32>) {
        let d = d.iter().map(|&v| round_to(DType::BF16, v)).collect();
        (TensorType::new([n as u64], DType::BF16), d)
    };
    let inputs = [
        bf(normals(s, 0, n, 1.0)),
        bf(normals(s, 1, n, 0.1)),
        bf(normals(s, 2, n, 0.01)),
        bf(normals(s, 3, n, 0.001).iter().map(|v| v.abs()).collect()),
        f32s(vec![0.5]),
        f32s(vec![1e-3, 4.0]),
    ];
    let plain = nearest_adamw();
    let sr = AdamW {
        param_stream: Some(3),
        ..plain.clone()
    };
    let want = run(plain, &inputs);
    let got = run(sr.clone(), &inputs);
    assert_eq!(got[1..], want[1..], "the moments changed");
    let (mut below, mut above) = (0, 0);
    for (&gi, &wi) in got[0].iter().zip(&want[0]) {
        let (down, up) = bf16_neighbours(wi);
        assert!(gi == down || gi == up, "param: {wi} rounded to {gi}");
        if down != up {
            below += usize::from(gi == down);
            above += usize::from(gi == up);
        }
    }
    assert!(
        below > 0 && above > 0,
        "rounded one way only: {below} down, {above} up"
    );
    assert_eq!(run(sr, &inputs), got, "not reproducible");
}

/// The chunked LM head + loss (the loss-only op and the training op, which makes the loss and
/// both gradients) gives, bit for bit, what the unfused `linear` → `cross_entropy` pair and
/// their backward ops give once every result is stored in BF16, whatever the chunk
/// (one row, an uneven split, exactly all rows, more than all rows): the memory planner may
/// chunk the head without changing a single weight.
#[test]
fn classifier_cross_entropy_equals_unfused_head_and_loss() {
    let s = seed();
    let (rows, hidden, vocab) = (10u64, 24u64, 40u64);
    let bf16 = |stream, n: u64| -> Vec<f32> {
        normals(s, stream, n as usize, 1.0)
            .into_iter()
            .map(|v| round_to(DType::BF16, v))
            .collect()
    };
    let store = |values: &[f32]| -> Vec<u32> {
        values
            .iter()
            .map(|&v| round_to(DType::BF16, v).to_bits())
            .collect()
    };
    let x = (
        TensorType::new([2, rows / 2, hidden], DType::BF16),
        bf16(1, rows * hidden),
    );
    let w = (
        TensorType::new([vocab, hidden], DType::BF16),
        bf16(2, vocab * hidden),
    );
    let mut ids: Vec<f32> = (0..rows)
        .map(|i| (rng::uniform(s, 3, i) * vocab as f64).floor() as f32)
        .collect();
    ids[3] = -1.0;
    let targets = (TensorType::new([2, rows / 2], DType::I32), ids);
    let dloss = (TensorType::new([1], DType::F32), vec![0.5f32]);

    let logits_ty = TensorType::new([2, rows / 2, vocab], DType::BF16);
    let logits: Vec<f32> = run(Linear, &[x.clone(), w.clone()])
        .remove(0)
        .into_iter()
        .map(|v| round_to(DType::BF16, v))
        .collect();
    let logits = (logits_ty, logits);
    let loss = run(CrossEntropy, &[logits.clone(), targets.clone()])[0][0];
    let dlogits: Vec<f32> = run(
        CrossEntropyBackward,
        &[logits.clone(), targets.clone(), dloss.clone()],
    )
    .remove(0)
    .into_iter()
    .map(|v| round_to(DType::BF16, v))
    .collect();
    let dlogits = (logits.0.clone(), dlogits);
    let dx = store(&run(LinearBackwardData, &[dlogits.clone(), w.clone()])[0]);
    let dw = store(&run(LinearBackwardWeight, &[dlogits, x.clone()])[0]);

    for chunk_rows in [1, 3, rows, rows + 5] {
        let op = ClassifierCrossEntropy {
            chunk_rows,
            logits: DType::BF16,
        };
        let fwd = run(op, &[x.clone(), w.clone(), targets.clone()]);
        assert_eq!(
            fwd[0][0].to_bits(),
            loss.to_bits(),
            "loss, chunk {chunk_rows}"
        );
        let back = ClassifierCrossEntropyBackward {
            chunk_rows,
            logits: DType::BF16,
        };
        let grads = run(
            back,
            &[x.clone(), w.clone(), targets.clone(), dloss.clone()],
        );
        assert_eq!(store(&grads[0]), dx, "dx, chunk {chunk_rows}");
        assert_eq!(
            grads[2][0].to_bits(),
            loss.to_bits(),
            "the backward's loss, chunk {chunk_rows}"
        );
        assert_eq!(store(&grads[1]), dw, "dw, chunk {chunk_rows}");
    }
}

/// `n` normal values of standard deviation `scale`, rounded to BF16 (what a BF16 tensor holds).
fn bf16_normals(seed: u64, stream: u64, n: u64, scale: f64) -> Vec<f32> {
    normals(seed, stream, n as usize, scale)
        .into_iter()
        .map(|v| round_to(DType::BF16, v))
        .collect()
}

/// The rows of tensors `parts` (of `cols[i]` columns each) side by side: row r of the result
/// is row r of each part in turn, the layout of a packed matmul's output.
fn pack_rows(parts: &[&[f32]], cols: &[u64]) -> Vec<f32> {
    let rows = parts[0].len() / cols[0] as usize;
    let mut out = Vec::new();
    for r in 0..rows {
        for (p, &c) in parts.iter().zip(cols) {
            let c = c as usize;
            out.extend_from_slice(&p[r * c..(r + 1) * c]);
        }
    }
    out
}

/// A BF16 activation type `[rows, hidden]` and random BF16 inputs of a residual add + RMSNorm:
/// the residual `a`, the branch `b` and the norm weight `w`.
fn residual_and_norm_weight(
    s: u64,
    rows: u64,
    hidden: u64,
) -> (TensorType, [(TensorType, Vec<f32>); 3]) {
    let act = TensorType::new([rows, hidden], DType::BF16);
    let a = (act.clone(), bf16_normals(s, 1, rows * hidden, 3.0));
    let b = (act.clone(), bf16_normals(s, 2, rows * hidden, 0.5));
    let w = (
        TensorType::new([hidden], DType::BF16),
        bf16_normals(s, 3, hidden, 1.0),
    );
    (act, [a, b, w])
}

/// The fused residual add + RMSNorm gives, bit for bit, what `add` then `rms_norm` give once the
/// sum is stored in BF16, as the fusion pass requires.
#[test]
fn add_rms_norm_equals_add_then_rms_norm() {
    let s = seed();
    let (rows, hidden) = (6u64, 32u64);
    let (act, [a, b, w]) = residual_and_norm_weight(s, rows, hidden);
    let bits = |values: &[f32], dtype| -> Vec<u32> {
        values
            .iter()
            .map(|&v| round_to(dtype, v).to_bits())
            .collect()
    };
    let sum: Vec<f32> = run(Add, &[a.clone(), b.clone()])[0]
        .iter()
        .map(|&v| round_to(DType::BF16, v))
        .collect();
    let unfused = run(RmsNorm { eps: 1e-6 }, &[(act, sum.clone()), w.clone()]);
    let op = AddRmsNorm {
        eps: 1e-6,
        dtype: DType::BF16,
    };
    let fused = run(op, &[a, b, w]);
    assert_eq!(bits(&fused[0], DType::BF16), bits(&sum, DType::BF16), "s");
    assert_eq!(
        bits(&fused[1], DType::BF16),
        bits(&unfused[0], DType::BF16),
        "y"
    );
    assert_eq!(
        bits(&fused[2], DType::F32),
        bits(&unfused[1], DType::F32),
        "rstd"
    );
}

/// The RMSNorm backward adding its `dx` into a residual gradient `r` gives, bit for bit, what
/// `rms_norm_backward` then `add` (either operand order) then `abs_max` give once every result
/// is stored, in BF16 and FP32, as the fusion pass requires. A NaN shows in the abs-max.
#[test]
fn rms_norm_backward_add_equals_rms_norm_backward_then_add() {
    let s = seed();
    let (rows, hidden) = (6u64, 64u64);
    for dtype in [DType::BF16, DType::F32] {
        let act = TensorType::new([rows, hidden], dtype);
        let values = |stream, n: u64, scale| -> Vec<f32> {
            let v = normals(s, stream, n as usize, scale);
            v.into_iter().map(|x| round_to(dtype, x)).collect()
        };
        let dy = (act.clone(), values(1, rows * hidden, 1.0));
        let x = (act.clone(), values(2, rows * hidden, 2.0));
        let w = (TensorType::new([hidden], dtype), values(3, hidden, 1.0));
        let rstd = run(RmsNorm { eps: 1e-6 }, &[x.clone(), w.clone()]).remove(1);
        let rstd = (TensorType::new([rows], DType::F32), rstd);
        let r = (act.clone(), values(4, rows * hidden, 3.0));
        let stored = |v: &[f32], dtype| -> Vec<u32> {
            v.iter().map(|&v| round_to(dtype, v).to_bits()).collect()
        };

        let backward = run(
            RmsNormBackward,
            &[dy.clone(), x.clone(), w.clone(), rstd.clone()],
        );
        let dx: Vec<f32> = backward[0].iter().map(|&v| round_to(dtype, v)).collect();
        let sum = run(Add, &[r.clone(), (act.clone(), dx.clone())]).remove(0);
        let swapped = run(Add, &[(act.clone(), dx), r.clone()]).remove(0);
        assert_eq!(stored(&sum, dtype), stored(&swapped, dtype), "{dtype}: add");
        let sum_stored: Vec<f32> = sum.iter().map(|&v| round_to(dtype, v)).collect();
        let amax = run(AbsMax, &[(act.clone(), sum_stored)])[0][0];

        let mut inputs = vec![dy, x, w, rstd, r];
        let fused = run(RmsNormBackwardAdd { dtype }, &inputs);
        let with_amax = run(RmsNormBackwardAddAbsMax { dtype }, &inputs);
        for got in [&fused, &with_amax] {
            assert_eq!(stored(&got[0], dtype), stored(&sum, dtype), "{dtype}: d");
            assert_eq!(
                stored(&got[1], dtype),
                stored(&backward[1], dtype),
                "{dtype}: dw"
            );
        }
        assert_eq!(with_amax[2][0].to_bits(), amax.to_bits(), "{dtype}: amax");

        inputs[0].1[37] = f32::NAN;
        let amax = run(RmsNormBackwardAddAbsMax { dtype }, &inputs)[2][0];
        assert!(amax.is_nan(), "{dtype}: NaN hidden");
    }
}

/// Every output of a fused op with abs-maxes equals the unfused op's, bit for bit once stored,
/// and each abs-max is `abs_max` of its unfused output as stored (BF16 here): the equalities
/// the fusion pass's abs-max rules stand on. A NaN in an input shows in the abs-max.
#[test]
fn abs_max_variants_equal_the_op_then_abs_max() {
    let s = seed();
    let (rows, hidden) = (6u64, 32u64);
    let bf16 = |stream, n: u64, scale| bf16_normals(s, stream, n, scale);
    let (act, [a, b, w]) = residual_and_norm_weight(s, rows, hidden);
    let (eps, dtype) = (1e-6, DType::BF16);
    // (fused, unfused, inputs, the unfused output whose abs-max the fused op emits)
    type Inputs = Vec<(TensorType, Vec<f32>)>;
    // Gate and up packed in one tensor, as horizontal fusion makes them.
    let gu = (
        TensorType::new([rows, 2 * hidden], DType::BF16),
        pack_rows(&[&a.1, &b.1], &[hidden, hidden]),
    );
    let dh = (act.clone(), bf16(4, rows * hidden, 2.0));
    let (unpacked, packed) = (false, true);
    let cases: [(Op, Op, Inputs, &[usize]); 6] = [
        (
            SwiGluAbsMax {
                dtype,
                packed: unpacked,
            }
            .into(),
            SwiGlu { packed: unpacked }.into(),
            vec![a.clone(), b.clone()],
            &[0],
        ),
        (
            SwiGluAbsMax { dtype, packed }.into(),
            SwiGlu { packed }.into(),
            vec![gu.clone()],
            &[0],
        ),
        (
            SwiGluBackwardAbsMax {
                dtype,
                packed: unpacked,
            }
            .into(),
            SwiGluBackward { packed: unpacked }.into(),
            vec![a.clone(), b.clone(), dh.clone()],
            &[0, 1],
        ),
        (
            SwiGluBackwardAbsMax { dtype, packed }.into(),
            SwiGluBackward { packed }.into(),
            vec![gu.clone(), dh.clone()],
            &[0],
        ),
        (
            RmsNormAbsMax { eps, dtype }.into(),
            RmsNorm { eps }.into(),
            vec![a.clone(), w.clone()],
            &[0],
        ),
        (
            AddRmsNormAbsMax { eps, dtype }.into(),
            AddRmsNorm { eps, dtype }.into(),
            vec![a.clone(), b.clone(), w.clone()],
            &[1],
        ),
    ];
    let stored = |values: &[f32], dtype| -> Vec<f32> {
        values.iter().map(|&v| round_to(dtype, v)).collect()
    };
    let bits = |values: &[f32]| -> Vec<u32> { values.iter().map(|v| v.to_bits()).collect() };
    for (fused, unfused, mut inputs, sources) in cases {
        let types: Vec<TensorType> = inputs.iter().map(|(t, _)| t.clone()).collect();
        let out_types = unfused.infer(&types).unwrap();
        let want = run(unfused.clone(), &inputs);
        let got = run(fused.clone(), &inputs);
        assert_eq!(got.len(), want.len() + sources.len(), "{fused}");
        for (i, ty) in out_types.iter().enumerate() {
            let (g, w) = (stored(&got[i], ty.dtype), stored(&want[i], ty.dtype));
            assert_eq!(bits(&g), bits(&w), "{fused}: output {i}");
        }
        for (k, &source) in sources.iter().enumerate() {
            let source_values = (out_types[source].clone(), stored(&want[source], dtype));
            let amax = run(AbsMax, &[source_values])[0][0];
            let got_amax = got[want.len() + k][0];
            assert_eq!(got_amax.to_bits(), amax.to_bits(), "{fused}: amax {k}");
        }

        inputs[0].1[37] = f32::NAN;
        assert!(
            run(fused.clone(), &inputs)[want.len()][0].is_nan(),
            "{fused}: NaN hidden"
        );
    }
}

/// Horizontal fusion's equalities, bit for bit: one linear over weights stacked by rows gives
/// the separate linears' outputs side by side (each output element is the same dot product,
/// over the same K in the same order, at sizes both below and above the GEMM's K blocking);
/// swiglu of the packed `gu` is swiglu of its halves and its backward writes the halves'
/// gradients side by side; split copies the column ranges and concat puts them back.
#[test]
fn packed_ops_equal_the_separate_ones() {
    let s = seed();
    let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
    let rows = 6u64;
    for k in [64u64, 520] {
        let cols = [64u64, 32, 32];
        let x = (
            TensorType::new([rows, k], DType::F32),
            normals(s, 1, (rows * k) as usize, 1.0),
        );
        let ws: Vec<Vec<f32>> = (0..3)
            .map(|i| normals(s, 2 + i, (cols[i as usize] * k) as usize, 0.1))
            .collect();
        let packed_w: Vec<f32> = ws.concat();
        let packed_ty = TensorType::new([cols.iter().sum(), k], DType::F32);
        let got = run(Linear, &[x.clone(), (packed_ty, packed_w)]).remove(0);
        let separate: Vec<Vec<f32>> = ws
            .iter()
            .zip(cols)
            .map(|(w, c)| {
                run(
                    Linear,
                    &[x.clone(), (TensorType::new([c, k], DType::F32), w.clone())],
                )
                .remove(0)
            })
            .collect();
        let parts: Vec<&[f32]> = separate.iter().map(Vec::as_slice).collect();
        let want = pack_rows(&parts, &cols);
        assert_eq!(
            bits(&got),
            bits(&want),
            "linear over packed weights, K = {k}"
        );

        // split is the columns; concat undoes it.
        let y = (
            TensorType::new([rows, cols.iter().sum()], DType::F32),
            want.clone(),
        );
        let split = run(
            Split {
                cols: cols.to_vec(),
            },
            std::slice::from_ref(&y),
        );
        for (i, part) in split.iter().enumerate() {
            assert_eq!(bits(part), bits(&separate[i]), "split part {i}");
        }
        let typed: Vec<(TensorType, Vec<f32>)> = split
            .iter()
            .zip(cols)
            .map(|(p, c)| (TensorType::new([rows, c], DType::F32), p.clone()))
            .collect();
        let concat = run(
            Concat {
                cols: cols.to_vec(),
            },
            &typed,
        )
        .remove(0);
        assert_eq!(bits(&concat), bits(&want), "concat of the split");
    }

    let f = 24u64;
    let half = TensorType::new([rows, f], DType::F32);
    let (gate, up, dh) = (
        normals(s, 10, (rows * f) as usize, 2.0),
        normals(s, 11, (rows * f) as usize, 2.0),
        normals(s, 12, (rows * f) as usize, 1.0),
    );
    let gu = (
        TensorType::new([rows, 2 * f], DType::F32),
        pack_rows(&[&gate, &up], &[f, f]),
    );
    let (g, u, d) = ((half.clone(), gate), (half.clone(), up), (half.clone(), dh));
    let h = run(SwiGlu { packed: false }, &[g.clone(), u.clone()]);
    let h_packed = run(SwiGlu { packed: true }, std::slice::from_ref(&gu));
    assert_eq!(bits(&h_packed[0]), bits(&h[0]), "packed swiglu");
    let grads = run(SwiGluBackward { packed: false }, &[g, u, d.clone()]);
    let dgu = run(SwiGluBackward { packed: true }, &[gu, d]);
    let want = pack_rows(&[&grads[0], &grads[1]], &[f, f]);
    assert_eq!(bits(&dgu[0]), bits(&want), "packed swiglu backward");
}

/// `split_rope` gives, bit for bit once stored in BF16, what `bias_add` (stored), `split` and
/// the two `rope`s give, with and without the bias; its backward what the two `rope_backward`s
/// (stored) and `concat` give, and its abs-max variant `abs_max` of that as stored: the
/// equalities horizontal fusion and the fusion pass's abs-max rule stand on.
#[test]
fn split_rope_equals_bias_add_split_and_ropes() {
    let s = seed();
    let (batch, seq, head_dim, theta) = (2u64, 5u64, 8u64, 1e4f32);
    let cols = [16u64, 8, 8];
    let total: u64 = cols.iter().sum();
    let bf16 = DType::BF16;
    let ty = |c: u64| TensorType::new([batch, seq, c], bf16);
    let stored =
        |v: &[f32]| -> Vec<u32> { v.iter().map(|&x| round_to(bf16, x).to_bits()).collect() };
    let store = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| round_to(bf16, x)).collect() };
    let rope = Rope { head_dim, theta };
    let rope_backward = RopeBackward { head_dim, theta };
    let qkv = (ty(total), bf16_normals(s, 1, batch * seq * total, 2.0));
    let b = (
        TensorType::new([total], bf16),
        bf16_normals(s, 2, total, 1.0),
    );

    for bias in [None, Some(bf16)] {
        let packed = match bias {
            Some(_) => store(&run(BiasAdd, &[qkv.clone(), b.clone()])[0]),
            None => qkv.1.clone(),
        };
        let parts = run(
            Split {
                cols: cols.to_vec(),
            },
            &[(ty(total), packed)],
        );
        let mut want = vec![];
        for (i, part) in parts.iter().enumerate() {
            want.push(match i {
                2 => part.clone(),
                _ => run(rope.clone(), &[(ty(cols[i]), part.clone())]).remove(0),
            });
        }
        let op = SplitRope {
            cols,
            head_dim,
            theta,
            bias,
        };
        let mut inputs = vec![qkv.clone()];
        inputs.extend(bias.map(|_| b.clone()));
        let got = run(op, &inputs);
        for i in 0..3 {
            assert_eq!(
                stored(&got[i]),
                stored(&want[i]),
                "split_rope bias {bias:?}: part {i}"
            );
        }
    }

    let grads: Vec<(TensorType, Vec<f32>)> = cols
        .iter()
        .enumerate()
        .map(|(i, &c)| (ty(c), bf16_normals(s, 3 + i as u64, batch * seq * c, 1.0)))
        .collect();
    let mut parts = vec![];
    for (i, g) in grads.iter().enumerate() {
        parts.push(match i {
            2 => g.clone(),
            _ => (
                g.0.clone(),
                store(&run(rope_backward.clone(), std::slice::from_ref(g))[0]),
            ),
        });
    }
    let want = run(
        Concat {
            cols: cols.to_vec(),
        },
        &parts,
    )
    .remove(0);
    let got = run(
        SplitRopeBackward {
            cols,
            head_dim,
            theta,
        },
        &grads,
    );
    assert_eq!(stored(&got[0]), stored(&want), "split_rope_backward");
    let abs_max = SplitRopeBackwardAbsMax {
        cols,
        head_dim,
        theta,
        dtype: bf16,
    };
    let got = run(abs_max.clone(), &grads);
    assert_eq!(
        stored(&got[0]),
        stored(&want),
        "split_rope_backward_abs_max"
    );
    let amax = run(AbsMax, &[(ty(total), store(&want))])[0][0];
    assert_eq!(
        got[1][0].to_bits(),
        amax.to_bits(),
        "split_rope_backward_abs_max: amax"
    );
    let mut with_nan = grads.clone();
    with_nan[2].1[3] = f32::NAN;
    assert!(run(abs_max, &with_nan)[1][0].is_nan(), "NaN hidden");
}

/// The packed data-gradient matmul sums over all `K = Σ M_i` rows of the packed weight in one
/// reduction, where the separate ones sum over each `M_i` and add the results: not bit-equal.
/// Each is an FP32 sum of at most `K + 2` rounded terms (`K` products and additions, plus the
/// adds of the separate partial sums), so each is within `(K + 2)·u·Σ|dy·W|` of the exact sum
/// (the classic γ_n bound, n·u ≪ 1) and the two within twice that.
#[test]
fn packed_backward_data_matmul_is_the_sum_of_the_separate_ones() {
    let s = seed();
    let (rows, k) = (5u64, 48u64);
    let cols = [96u64, 32, 32];
    let total: u64 = cols.iter().sum();
    let dys: Vec<Vec<f32>> = (0..3)
        .map(|i| normals(s, 20 + i, (rows * cols[i as usize]) as usize, 1.0))
        .collect();
    let ws: Vec<Vec<f32>> = (0..3)
        .map(|i| normals(s, 30 + i, (cols[i as usize] * k) as usize, 0.5))
        .collect();
    let parts: Vec<&[f32]> = dys.iter().map(Vec::as_slice).collect();
    let dy = (
        TensorType::new([rows, total], DType::F32),
        pack_rows(&parts, &cols),
    );
    let w = (TensorType::new([total, k], DType::F32), ws.concat());
    let packed = run(LinearBackwardData, &[dy.clone(), w.clone()]).remove(0);
    let mut sum = vec![0f32; (rows * k) as usize];
    for i in 0..3 {
        let c = cols[i];
        let dy_i = (TensorType::new([rows, c], DType::F32), dys[i].clone());
        let w_i = (TensorType::new([c, k], DType::F32), ws[i].clone());
        let part = run(LinearBackwardData, &[dy_i, w_i]).remove(0);
        for (acc, p) in sum.iter_mut().zip(part) {
            *acc += p;
        }
    }
    for r in 0..rows as usize {
        for j in 0..k as usize {
            let magnitude: f64 = (0..total as usize)
                .map(|m| (dy.1[r * total as usize + m] * w.1[m * k as usize + j]).abs() as f64)
                .sum();
            let tol = 2.0 * (total as f64 + 2.0) * U * magnitude;
            let (got, want) = (
                packed[r * k as usize + j] as f64,
                sum[r * k as usize + j] as f64,
            );
            assert_close(&format!("dx[{r}, {j}]"), got, want, tol);
        }
    }
}
