//! `Quantize`: scaled conversion to FP8 with a per-tensor scale from the current abs-max, as in
//! LLMQ: `scale = fmax / amax` (448 for e4m3, 57344 for e5m2), `q = round(x · scale)`, and the
//! inverse `descale = amax / fmax` kept for the matmul (cuBLASLt's scale pointers take it).
//!
//! `QuantizeDual` writes the same values in both layouts from one read of `x`, for tensors whose
//! two matmuls need both (an activation: the forward's `x·Wᵀ` and the weight gradient; an
//! output gradient: the data and the weight gradients). `x` is `[.., C]` viewed as `[rows, C]`;
//! its second output `qT` is `[C, rows]` row-major, so a matmul that contracts over `x`'s rows
//! (the tokens of a weight gradient) or over a weight's output dimension (the data gradient)
//! finds its operand contiguous in the contraction dimension, as `Fp8Matmul` requires: for one
//! `amax`, `qT[c][r]` is bit for bit `q[r][c]`. It costs a byte written per element more than
//! `Quantize`, where `Quantize` and then `TransposeFp8` cost two (the transpose reads its input
//! again).

use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `q = fp8(x · fmax/amax)`, `descale = amax/fmax`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantize {
    /// The FP8 format of `q`.
    pub to: DType,
}

/// Largest finite value of an FP8 format.
pub fn fp8_max(dtype: DType) -> f32 {
    match dtype {
        DType::F8E4M3 => 448.0,
        DType::F8E5M2 => 57344.0,
        other => panic!("{other} is not an FP8 format"),
    }
}

/// The factor `x` is multiplied by before rounding to `to`: `fmax / amax`. An all-zero (or
/// non-finite) abs-max gets scale 1, so zeros stay zeros and nothing divides by zero.
fn scale_from_amax(amax: f32, to: DType) -> f32 {
    if amax > 0.0 && amax.is_finite() {
        fp8_max(to) / amax
    } else {
        1.0
    }
}

/// What every quantisation checks: a float `x`, an FP32 `amax`, an FP8 target.
fn check_operands(op: &'static str, inputs: &[TensorType], to: DType) -> Result<(), OpError> {
    check::float(op, "x", &inputs[0])?;
    check::dtype(op, "amax", &inputs[1], DType::F32)?;
    check::shape(op, to.is_fp8(), || {
        format!("target {to} is not an FP8 format")
    })
}

/// Calls `put(r, c, rows, cols, v)` with every element of `x` (`[.., C]` viewed as
/// `[rows, C]`) at row r, column c, times the scale of `amax`; returns the descale.
fn quantize_rows(
    x: &View,
    amax: f32,
    to: DType,
    mut put: impl FnMut(usize, usize, usize, usize, f32),
) -> f32 {
    let scale = scale_from_amax(amax, to);
    let cols = *x.shape.last().unwrap_or(&1) as usize;
    let rows = x.data.len() / cols.max(1);
    for (r, row) in x.data.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            put(r, c, rows, cols, v * scale);
        }
    }
    1.0 / scale
}

impl OpSpec for Quantize {
    fn name(&self) -> &'static str {
        "quantize"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "amax"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["q", "descale"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check_operands("quantize", inputs, self.to)?;
        Ok(vec![
            inputs[0].with_dtype(self.to),
            TensorType::new([1], DType::F32),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let scale = scale_from_amax(inputs[1].data[0], self.to);
        for (q, x) in outputs[0].data.iter_mut().zip(inputs[0].data) {
            *q = x * scale;
        }
        outputs[1].data[0] = 1.0 / scale;
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_string())]
    }
}

/// `q = fp8(x · fmax/amax)`, `qT = qᵀ`, `descale = amax/fmax`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeDual {
    /// The FP8 format of `q` and `qT`.
    pub to: DType,
}

impl OpSpec for QuantizeDual {
    fn name(&self) -> &'static str {
        "quantize_dual"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "amax"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["q", "qT", "descale"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let x = &inputs[0];
        check_operands("quantize_dual", inputs, self.to)?;
        Ok(vec![
            x.with_dtype(self.to),
            TensorType::new([x.last_dim(), x.rows()], self.to),
            TensorType::new([1], DType::F32),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (q, rest) = outputs.split_at_mut(1);
        let (qt, descale) = rest.split_at_mut(1);
        descale[0].data[0] = quantize_rows(
            &inputs[0],
            inputs[1].data[0],
            self.to,
            |r, c, rows, cols, v| {
                q[0].data[r * cols + c] = v;
                qt[0].data[c * rows + r] = v;
            },
        );
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_string())]
    }
}
