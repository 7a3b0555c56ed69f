//! Exact emulation of the storage dtypes: FP32 values rounded to what the GPU would store.
//!
//! BF16 uses the `half` crate (round to nearest even). FP8 follows the CUDA conversion
//! instructions with saturation (`cvt.rn.satfinite.e4m3x2.f32`): nearest even, values beyond
//! the largest finite magnitude clamp to it, NaN stays NaN.

use crate::DType;
use std::sync::LazyLock;

/// Rounds `x` to the nearest value representable in `dtype`, returned as FP32.
pub fn round_to(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F32 => x,
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::I32 => x.round(),
        DType::F8E4M3 | DType::F8E5M2 => decode_fp8(dtype, encode_fp8(dtype, x)),
    }
}

/// Encodes `x` as an FP8 byte (nearest even, saturating to the largest finite value).
pub fn encode_fp8(dtype: DType, x: f32) -> u8 {
    let (exp_bits, man_bits, max_finite) = fp8_layout(dtype);
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    if x.is_nan() {
        return 0x7f;
    }
    let a = x.abs().min(max_finite);
    let bias = (1i32 << (exp_bits - 1)) - 1;
    let min_normal_exp = 1 - bias;
    let a_bits = a.to_bits();
    let bits = if ((a_bits >> 23) as i32) - 127 >= min_normal_exp {
        // A normal: round the FP32 mantissa to `man_bits` bits, nearest even, on the bits (a
        // carry into the exponent is the right result), then re-bias the exponent. `a` is at
        // most the largest finite value, so the result is too.
        let shift = 23 - man_bits;
        let round = ((a_bits >> shift) & 1) + (1 << (shift - 1)) - 1;
        ((a_bits + round) >> shift) - (((127 - bias) as u32) << man_bits)
    } else {
        // A subnormal (or zero): a multiple of the smallest quantum 2^(min_normal_exp -
        // man_bits); rounding up to 2^man_bits quanta gives the smallest normal's code.
        let inv_quantum = f32::from_bits(((man_bits as i32 - min_normal_exp + 127) as u32) << 23);
        (a * inv_quantum).round_ties_even() as u32
    };
    sign | (bits as u8)
}

/// Decodes an FP8 byte to FP32 (from a table built once per format).
pub fn decode_fp8(dtype: DType, byte: u8) -> f32 {
    static E4M3: LazyLock<[f32; 256]> =
        LazyLock::new(|| std::array::from_fn(|b| decode_fp8_bits(DType::F8E4M3, b as u8)));
    static E5M2: LazyLock<[f32; 256]> =
        LazyLock::new(|| std::array::from_fn(|b| decode_fp8_bits(DType::F8E5M2, b as u8)));
    match dtype {
        DType::F8E4M3 => E4M3[byte as usize],
        DType::F8E5M2 => E5M2[byte as usize],
        other => panic!("{other} is not an FP8 format"),
    }
}

/// Decodes an FP8 byte from its sign, exponent and mantissa fields.
fn decode_fp8_bits(dtype: DType, byte: u8) -> f32 {
    let (exp_bits, man_bits, _) = fp8_layout(dtype);
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((byte & 0x7f) >> man_bits) as i32;
    let man = (byte & ((1u8 << man_bits) - 1)) as f32;
    let bias = (1i32 << (exp_bits - 1)) - 1;
    let max_exp = (1i32 << exp_bits) - 1;
    match dtype {
        DType::F8E4M3 if byte & 0x7f == 0x7f => return f32::NAN,
        DType::F8E5M2 if exp == max_exp => {
            return if man == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            };
        }
        _ => {}
    }
    let scale = 2f32.powi(man_bits as i32);
    if exp == 0 {
        sign * man / scale * 2f32.powi(1 - bias)
    } else {
        sign * (1.0 + man / scale) * 2f32.powi(exp - bias)
    }
}

fn fp8_layout(dtype: DType) -> (u32, u32, f32) {
    match dtype {
        DType::F8E4M3 => (4, 3, 448.0),
        DType::F8E5M2 => (5, 2, 57344.0),
        other => panic!("{other} is not an FP8 format"),
    }
}

/// Rounds `x` to BF16 stochastically with the 16 random bits `r`: up (in magnitude) with a
/// probability equal to the distance from the lower neighbour over the spacing of the two, so
/// the expected result is `x` (unbiased). Adding `r` to the 16 bits BF16 drops and truncating
/// does exactly that. Infinities and NaN round to nearest (they stay what they are).
pub fn round_bf16_stochastic(x: f32, r: u16) -> f32 {
    if !x.is_finite() {
        return round_to(DType::BF16, x);
    }
    f32::from_bits(x.to_bits().wrapping_add(r as u32) & 0xffff_0000)
}

/// Rounds every value of a tensor to BF16 stochastically, value `i` drawing its bits from
/// position `i` of random stream `stream` under seed `step`: the same tensor, step and stream
/// always round the same way, on any backend and after a resume.
pub fn round_bf16_stochastic_all(values: &mut [f32], step: u64, stream: u64) {
    for (i, v) in values.iter_mut().enumerate() {
        let bits = (crate::rng::word(step, stream, i as u64) >> 48) as u16;
        *v = round_bf16_stochastic(*v, bits);
    }
}
