//! Storage dtypes. Arithmetic is always FP32; a dtype says how a value is stored.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How the elements of a tensor are stored in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16: 8 exponent bits, 7 mantissa bits.
    BF16,
    /// OCP FP8 e4m3 ("fn": no infinities, one NaN pattern per sign, max 448).
    F8E4M3,
    /// OCP FP8 e5m2 (IEEE-like: infinities and NaNs, max finite 57344).
    F8E5M2,
    /// Signed 32-bit integer (token ids, targets).
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 => 2,
            DType::F8E4M3 | DType::F8E5M2 => 1,
        }
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }

    /// True for the two 8-bit float formats.
    pub fn is_fp8(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2)
    }

    /// The name used in specs, dumps and CUDA symbols (`bf16`, `e4m3`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "e4m3",
            DType::F8E5M2 => "e5m2",
            DType::I32 => "i32",
        }
    }

    /// Parses the name written by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        [
            DType::F32,
            DType::BF16,
            DType::F8E4M3,
            DType::F8E5M2,
            DType::I32,
        ]
        .into_iter()
        .find(|d| d.name() == name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
