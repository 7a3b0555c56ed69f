//! `AddRmsNorm`: a residual add and the RMS normalisation of its result in one pass over memory,
//! `s = a + b`, `y = s / sqrt(mean(s²) + eps) · w`: the fusion pass puts it where an `add` feeds
//! an `rms_norm` (every pre-norm block does this twice), saving a write and a read of `s`.
//!
//! Its outputs are those of the pair, `s` and `y, rstd`, and so are its numbers, bit for bit:
//! `s` is rounded to its storage dtype (`dtype`) before it is normalised, as the unfused `rms_norm`
//! would read it back from memory. It is made by a pass after autodiff, so it has no backward rule.
//!
//! `AddRmsNormAbsMax` also emits `max |y|` of `y` as stored, the scale input of the FP8 operand
//! of the matmuls the norm feeds (q/k/v, gate/up): the fusion pass puts it where an `abs_max`
//! reads the fused norm's output.

use super::RmsNorm;
use super::abs_max::{abs_max_as_stored, with_abs_max};
use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut, numerics};
use serde::{Deserialize, Serialize};

/// `s = a + b; (y, rstd) = rms_norm(s, w)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddRmsNorm {
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// The storage dtype of `s` (that of `a` and `b`).
    pub dtype: DType,
}

/// `(s, y, rstd) = add_rms_norm(a, b, w)`, `amax = max |y|` once `y` is rounded to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddRmsNormAbsMax {
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// The storage dtype of `s` and `y` (that of `a` and `b`).
    pub dtype: DType,
}

impl AddRmsNormAbsMax {
    fn add_norm(&self) -> AddRmsNorm {
        AddRmsNorm {
            eps: self.eps,
            dtype: self.dtype,
        }
    }
}

impl AddRmsNorm {
    fn norm(&self) -> RmsNorm {
        RmsNorm { eps: self.eps }
    }
}

impl OpSpec for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add_rms_norm"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["a", "b", "w"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["s", "y", "rstd"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (a, b, w) = (&inputs[0], &inputs[1], &inputs[2]);
        check::same_dtype("add_rms_norm", "b", a, b)?;
        check::same_shape("add_rms_norm", "a and b", a, b)?;
        check::shape("add_rms_norm", a.dtype == self.dtype, || {
            format!(
                "dtype {} must be a's dtype {}",
                self.dtype.name(),
                a.dtype.name()
            )
        })?;
        let mut outputs = vec![a.clone()];
        outputs.extend(self.norm().infer(&[a.clone(), w.clone()])?);
        Ok(outputs)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        5.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (a, b, w) = (inputs[0], inputs[1], inputs[2]);
        let (sum, norm_outputs) = outputs.split_at_mut(1);
        for ((s, x), y) in sum[0].data.iter_mut().zip(a.data).zip(b.data) {
            *s = numerics::round_to(self.dtype, x + y);
        }
        let s = View {
            shape: sum[0].shape,
            data: sum[0].data,
        };
        self.norm().cpu(&[s, w], norm_outputs)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", format!("{:e}", self.eps)),
            ("dtype", self.dtype.name().to_string()),
        ]
    }
}

impl OpSpec for AddRmsNormAbsMax {
    fn name(&self) -> &'static str {
        "add_rms_norm_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["a", "b", "w"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["s", "y", "rstd", "amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let outputs = self.add_norm().infer(inputs)?;
        with_abs_max("add_rms_norm_abs_max", self.dtype, outputs, 1)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        6.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (add_norm, amax) = outputs.split_at_mut(3);
        self.add_norm().cpu(inputs, add_norm)?;
        amax[0].data[0] = abs_max_as_stored(self.dtype, add_norm[1].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.add_norm().attrs()
    }
}
