//! Exhaustive checks of `numerics.rs` against references built another way.
//!
//! * FP8 decode: all 256 codes of e4m3 and e5m2 against a table built by enumerating the OCP
//!   FP8 values in increasing order (sign–magnitude codes are ordered like their values);
//! * FP8 encode: every BF16 bit pattern, every midpoint between neighbouring FP8 values (and its
//!   FP32 neighbours), and random FP32 values, against a brute-force nearest-value search over
//!   the table, ties to the even code, saturating to ±max finite like `cvt.rn.satfinite`;
//! * BF16: `round_to` against round-to-nearest-even done on the bits.

use llmq_kernels::DType;
use llmq_kernels::numerics::{decode_fp8, encode_fp8, round_to};
use llmq_kernels::rng;

/// What the OCP 8-bit floating point specification (v1.0) fixes for one format.
struct Format {
    dtype: DType,
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    /// e5m2 reserves the top exponent for infinities and NaNs (IEEE-like); e4m3 ("fn") has
    /// no infinities and uses only S.1111.111 for NaN.
    ieee_specials: bool,
}

const E4M3: Format = Format {
    dtype: DType::F8E4M3,
    exp_bits: 4,
    man_bits: 3,
    bias: 7,
    ieee_specials: false,
};

const E5M2: Format = Format {
    dtype: DType::F8E5M2,
    exp_bits: 5,
    man_bits: 2,
    bias: 15,
    ieee_specials: true,
};

/// The 128 non-negative code values in code order, built by counting: first the subnormals
/// `k · 2^(1−bias−m)`, then binade after binade `(2^m + k) · 2^(e−bias−m)`, with the special
/// codes at the top. Values are exact in f64.
fn positive_table(f: &Format) -> Vec<f64> {
    let m = f.man_bits as i32;
    let mut values = Vec::new();
    for k in 0..(1 << m) {
        values.push(k as f64 * 2f64.powi(1 - f.bias - m));
    }
    for e in 1..(1i32 << f.exp_bits) {
        for k in 0..(1 << m) {
            values.push(((1 << m) + k) as f64 * 2f64.powi(e - f.bias - m));
        }
    }
    assert_eq!(values.len(), 128);
    // The specials replace the top of the count.
    if f.ieee_specials {
        let top = 128 - (1 << m);
        values[top] = f64::INFINITY;
        for v in &mut values[top + 1..] {
            *v = f64::NAN;
        }
    } else {
        values[127] = f64::NAN;
    }
    values
}

/// All 256 values: the positive table, then its negation (sign bit set).
fn table(f: &Format) -> Vec<f64> {
    let pos = positive_table(f);
    pos.iter().copied().chain(pos.iter().map(|v| -v)).collect()
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a == b && a.is_sign_negative() == b.is_sign_negative())
}

#[test]
fn decode_matches_the_ocp_table() {
    for f in [&E4M3, &E5M2] {
        let t = table(f);
        for code in 0..=255u8 {
            let got = decode_fp8(f.dtype, code) as f64;
            assert!(
                same_value(got, t[code as usize]),
                "{}: decode({code:#04x}) = {got}, the OCP value is {}",
                f.dtype,
                t[code as usize]
            );
        }
    }
}

/// Landmarks the OCP specification states in its table of format properties.
#[test]
fn decode_landmarks() {
    let d = |dtype, code| decode_fp8(dtype, code);
    assert_eq!(d(DType::F8E4M3, 0x7e), 448.0);
    assert_eq!(d(DType::F8E4M3, 0x08), 2f32.powi(-6));
    assert_eq!(d(DType::F8E4M3, 0x01), 2f32.powi(-9));
    assert_eq!(d(DType::F8E4M3, 0xfe), -448.0);
    assert!(d(DType::F8E4M3, 0x7f).is_nan() && d(DType::F8E4M3, 0xff).is_nan());
    assert_eq!(d(DType::F8E4M3, 0x78), 256.0, "e4m3 has no infinity");
    assert_eq!(d(DType::F8E5M2, 0x7b), 57344.0);
    assert_eq!(d(DType::F8E5M2, 0x04), 2f32.powi(-14));
    assert_eq!(d(DType::F8E5M2, 0x01), 2f32.powi(-16));
    assert_eq!(d(DType::F8E5M2, 0x7c), f32::INFINITY);
    assert_eq!(d(DType::F8E5M2, 0xfc), f32::NEG_INFINITY);
    for code in [0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff] {
        assert!(d(DType::F8E5M2, code).is_nan());
    }
    assert!(d(DType::F8E4M3, 0x80) == 0.0 && d(DType::F8E4M3, 0x80).is_sign_negative());
}

/// The brute-force encoder: nearest finite value by exhaustive search over all codes of the
/// same sign, ties to the code with an even (zero) lowest bit; magnitudes beyond the largest
/// finite value (infinities included) saturate to it, as `cvt.rn.satfinite` does.
fn reference_encode(t: &[f64], x: f32) -> Option<u8> {
    if x.is_nan() {
        return None; // any NaN code
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = (x as f64).abs();
    let finite: Vec<u8> = (0..128u8).filter(|&c| t[c as usize].is_finite()).collect();
    let max = finite.iter().map(|&c| t[c as usize]).fold(0.0, f64::max);
    let a = a.min(max);
    let mut best = 0u8;
    for &c in &finite {
        let (d, db) = ((t[c as usize] - a).abs(), (t[best as usize] - a).abs());
        if d < db || (d == db && c & 1 == 0) {
            best = c;
        }
    }
    Some(sign | best)
}

fn check_encode(f: &Format, t: &[f64], x: f32) {
    let got = encode_fp8(f.dtype, x);
    match reference_encode(t, x) {
        None => assert!(
            t[got as usize].is_nan(),
            "{}: encode({x}) = {got:#04x}, a non-NaN code for NaN",
            f.dtype
        ),
        Some(want) => assert_eq!(
            got,
            want,
            "{}: encode({x:e} = {:#010x}) = {got:#04x} ({}), nearest-even is {want:#04x} ({})",
            f.dtype,
            x.to_bits(),
            t[got as usize],
            t[want as usize]
        ),
    }
    // round_to is decode ∘ encode.
    let r = round_to(f.dtype, x);
    assert!(
        same_value(r as f64, t[got as usize]),
        "{}: round_to({x})",
        f.dtype
    );
}

#[test]
fn encode_every_bf16_value() {
    for f in [&E4M3, &E5M2] {
        let t = table(f);
        for bits in 0..=u16::MAX {
            check_encode(f, &t, f32::from_bits((bits as u32) << 16));
        }
    }
}

/// Every midpoint between neighbouring FP8 magnitudes (the ties) and the FP32 values either
/// side of it, both signs; plus the largest finite value and a little beyond.
#[test]
fn encode_ties_and_their_neighbours() {
    for f in [&E4M3, &E5M2] {
        let t = table(f);
        let pos: Vec<f64> = t[..128].iter().copied().filter(|v| v.is_finite()).collect();
        for w in pos.windows(2) {
            let mid = ((w[0] + w[1]) / 2.0) as f32; // exact: one more bit than FP8 has
            assert_eq!(mid as f64, (w[0] + w[1]) / 2.0);
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            for x in [mid, below, above, w[0] as f32, w[1] as f32] {
                check_encode(f, &t, x);
                check_encode(f, &t, -x);
            }
        }
        let max = *pos.last().unwrap() as f32;
        for x in [
            max,
            max * 1.03,
            max * 1.5,
            max * 4.0,
            f32::MAX,
            f32::INFINITY,
        ] {
            check_encode(f, &t, x);
            check_encode(f, &t, -x);
        }
    }
}

/// Random FP32 values: uniformly random bit patterns (all exponents, NaNs, subnormals) and
/// values spread log-uniformly over and around the FP8 range.
#[test]
fn encode_random_f32() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    for f in [&E4M3, &E5M2] {
        let t = table(f);
        for i in 0..20_000 {
            check_encode(f, &t, f32::from_bits(rng::word(seed, 0, i) as u32));
            let exponent = rng::uniform(seed, 1, i) * 44.0 - 24.0;
            let sign = if rng::word(seed, 2, i) & 1 == 0 {
                1.0
            } else {
                -1.0
            };
            check_encode(f, &t, (sign * 2f64.powf(exponent)) as f32);
        }
    }
}

#[test]
fn encode_keeps_the_sign_of_zero() {
    for f in [&E4M3, &E5M2] {
        assert_eq!(encode_fp8(f.dtype, 0.0), 0x00);
        assert_eq!(encode_fp8(f.dtype, -0.0), 0x80);
        assert_eq!(
            encode_fp8(f.dtype, -1e-30),
            0x80,
            "{}: tiny negative",
            f.dtype
        );
    }
}

/// Round to nearest even on the bits: add 0x7FFF plus the lowest kept bit, drop the low half.
/// A carry out of the mantissa moves to the next binade (and from the largest finite value to
/// infinity), which is what IEEE rounding does.
fn bf16_by_bits(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    f32::from_bits(b.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}

#[test]
fn bf16_round_to_nearest_even() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    // Every upper half with the low halves that decide the rounding: exact, just below and at
    // and just above the tie, the largest, and a random one.
    for hi in 0..=u16::MAX as u32 {
        let random = rng::word(seed, 0, hi as u64) as u32 & 0xffff;
        for lo in [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff, random] {
            let x = f32::from_bits((hi << 16) | lo);
            let (got, want) = (round_to(DType::BF16, x), bf16_by_bits(x));
            assert!(
                (got.is_nan() && want.is_nan()) || got.to_bits() == want.to_bits(),
                "bf16 round_to({x:e} = {:#010x}) = {got:e}, nearest even is {want:e}",
                x.to_bits()
            );
        }
    }
}
