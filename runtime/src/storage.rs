//! Conversion between FP32 values and the bytes of each storage dtype, exactly as the GPU
//! stores them (round to nearest even; FP8 saturating). Shared by the CPU backend and
//! checkpoints.

use llmq_kernels::DType;
use llmq_kernels::numerics::{decode_fp8, encode_fp8};

/// Stores `values` as `dtype` into `out` (which holds `values.len()` elements of `dtype`).
pub fn encode(dtype: DType, values: &[f32], out: &mut [u8]) {
    match dtype {
        DType::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::I32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&(*v as i32).to_le_bytes());
            }
        }
        DType::BF16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        DType::F8E4M3 | DType::F8E5M2 => {
            for (v, o) in values.iter().zip(out.iter_mut()) {
                *o = encode_fp8(dtype, *v);
            }
        }
    }
}

/// Reads `bytes` of `dtype` as FP32 values into `out`.
pub fn decode(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        DType::I32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = i32::from_le_bytes(b.try_into().unwrap()) as f32;
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        DType::F8E4M3 | DType::F8E5M2 => {
            for (o, b) in out.iter_mut().zip(bytes) {
                *o = decode_fp8(dtype, *b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_the_dtype_rounding() {
        let values = [0.1f32, -3.75, 1e-3, 500.0, -0.0];
        for dtype in [DType::F32, DType::BF16, DType::F8E4M3, DType::F8E5M2] {
            let mut bytes = vec![0u8; values.len() * dtype.size_bytes() as usize];
            encode(dtype, &values, &mut bytes);
            let mut back = vec![0f32; values.len()];
            decode(dtype, &bytes, &mut back);
            for (v, b) in values.iter().zip(&back) {
                assert_eq!(
                    *b,
                    llmq_kernels::numerics::round_to(dtype, *v),
                    "{dtype} {v}"
                );
            }
        }
    }
}
