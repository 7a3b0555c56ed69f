//! `TransposeFp8`: the transpose of an FP8 tensor, `[.., C]` viewed as `[rows, C]` to `[C, rows]`.
//!
//! The FP8 recipe needs a tensor's FP8 copy in both layouts when two matmuls contract over
//! different dimensions of it (an activation: its columns in the forward, its rows in the
//! weight gradient). Quantising is elementwise with one scale, so transposing the FP8 copy gives
//! exactly what quantising into the transposed layout gives, while reading one byte per element
//! instead of two, and the backward can keep the one-byte copy instead of the BF16 tensor. The
//! descale is the source's.

use crate::op::check;
use crate::{OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `t[c][r] = x[r][c]` for an FP8 `x` viewed as `[rows, C]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransposeFp8;

impl OpSpec for TransposeFp8 {
    fn name(&self) -> &'static str {
        "transpose_fp8"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["t"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let x = &inputs[0];
        check::shape("transpose_fp8", x.dtype.is_fp8(), || {
            format!("x must be FP8, got {}", x.dtype)
        })?;
        Ok(vec![TensorType::new([x.last_dim(), x.rows()], x.dtype)])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let x = inputs[0];
        let cols = *x.shape.last().unwrap_or(&1) as usize;
        let rows = x.data.len() / cols.max(1);
        let t = &mut outputs[0].data;
        for (r, row) in x.data.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                t[c * rows + r] = v;
            }
        }
        Ok(())
    }
}
