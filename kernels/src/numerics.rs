//! Exact emulation of the storage dtypes: FP32 values rounded to what the GPU would store.
//!
//! BF16 uses the `half` crate (round to nearest even). FP8 follows the CUDA conversion
//! instructions with saturation (`cvt.rn.satfinite.e4m3x2.f32`): nearest even, values beyond
//! the largest finite magnitude clamp to it, NaN stays NaN.

use crate::DType;

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
    // Quantum (spacing) of the format at |a|: normals share 2^(e - man_bits), subnormals the
    // smallest one. Rounding a / quantum to an integer with ties to even is exact in FP32.
    let e = if a == 0.0 {
        min_normal_exp
    } else {
        (a.log2().floor() as i32).max(min_normal_exp)
    };
    let quantum = 2f32.powi(e - man_bits as i32);
    let mut q = round_half_even(a / quantum);
    let mut e = e;
    if q >= (2u32 << man_bits) as f32 {
        // Rounding carried into the next binade.
        q /= 2.0;
        e += 1;
    }
    let q = q as u32;
    let bits = if q < (1u32 << man_bits) {
        q // subnormal (e was the minimum)
    } else {
        (((e + bias) as u32) << man_bits) | (q - (1u32 << man_bits))
    };
    sign | (bits as u8)
}

/// Decodes an FP8 byte to FP32.
pub fn decode_fp8(dtype: DType, byte: u8) -> f32 {
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

fn round_half_even(v: f32) -> f32 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}
