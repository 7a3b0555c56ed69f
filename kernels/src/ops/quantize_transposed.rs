//! `QuantizeTransposed`: `Quantize` writing the transpose. `x` is `[.., C]` viewed as
//! `[rows, C]`; `q` is `[C, rows]` row-major, so a matmul that contracts over `x`'s rows (the
//! tokens of a weight gradient) or over a weight's output dimension (the data gradient) finds
//! its operand contiguous in the contraction dimension, as `Fp8Matmul` requires. Same scale
//! rule and same values as `Quantize`, only the layout differs: for one `amax`, `q[c][r]` is
//! bit for bit `Quantize`'s `q[r][c]`.

use crate::op::check;
use crate::ops::quantize::scale_from_amax;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `q = fp8(xᵀ · fmax/amax)`, `descale = amax/fmax`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeTransposed {
    /// The FP8 format of `q`.
    pub to: DType,
}

impl OpSpec for QuantizeTransposed {
    fn name(&self) -> &'static str {
        "quantize_transposed"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "amax"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["q", "descale"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let x = &inputs[0];
        check::float("quantize_transposed", "x", x)?;
        check::dtype("quantize_transposed", "amax", &inputs[1], DType::F32)?;
        check::shape("quantize_transposed", self.to.is_fp8(), || {
            format!("target {} is not an FP8 format", self.to)
        })?;
        Ok(vec![
            TensorType::new([x.last_dim(), x.rows()], self.to),
            TensorType::new([1], DType::F32),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let x = inputs[0];
        let scale = scale_from_amax(inputs[1].data[0], self.to);
        let cols = *x.shape.last().unwrap_or(&1) as usize;
        let rows = x.data.len() / cols.max(1);
        let q = &mut outputs[0].data;
        for (r, row) in x.data.chunks_exact(cols).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                q[c * rows + r] = v * scale;
            }
        }
        outputs[1].data[0] = 1.0 / scale;
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_string())]
    }
}
